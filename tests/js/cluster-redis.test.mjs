// The cluster's basic matrix (issue 8) on a single redis server: 3 ringcast nodes, pusher-js clients
// spread over them, the pusher Node SDK from every node, webhooks once. Cases: lib/cluster-cases.mjs.

import { registerBasic } from './lib/cluster-cases.mjs';

registerBasic('redis');
