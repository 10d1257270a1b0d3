// The cluster's fault cases (issue 8) on a single nats server: kill -9 of a node and of the webhook
// leader, graceful stop, broker restart. Each case starts its own broker and 3 nodes.
// Cases: lib/cluster-cases.mjs.

import { registerFaults } from './lib/cluster-cases.mjs';

registerFaults('nats');
