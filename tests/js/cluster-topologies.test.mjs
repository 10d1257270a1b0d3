// Broker topologies (issue 8): a Redis Cluster of 3 masters (built with redis-cli --cluster
// create; ringcast uses sharded pub/sub, the client library follows MOVED/ASK), a NATS cluster
// of 3 servers with routes (each ringcast node talks to a different server), a redis-server
// that requires a password, and two clusters with different prefixes sharing one broker.
// They run the basic cross-node delivery and presence cases. Cases: lib/cluster-cases.mjs.

import { registerBasic, registerSharing } from './lib/cluster-cases.mjs';

const cases = [
  'public channel: an event published through any node reaches every subscriber on every node exactly once',
  'presence across nodes: subscription_succeeded has the cluster members; member_added/removed reach every node once',
  'one user on two nodes: member_added once on the first connection anywhere, member_removed once on the last',
];

registerBasic('redis-cluster', { cases });
registerBasic('nats-cluster', { cases, nodeUrl: (broker, i) => broker.nodeUrl(i) });
registerBasic('redis', { cases: cases.slice(0, 2), brokerOpts: { password: 'ringcast-test-pw' }, label: 'redis with a password' });
registerSharing('redis');
registerSharing('nats');
