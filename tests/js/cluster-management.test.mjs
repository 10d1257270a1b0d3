// Management in a cluster (issue 10): a change made through any node's /api reaches every node
// through the broker. For each of a real redis-server and a real nats-server: 2 ringcast nodes,
// each with its own store, then a third started later. An app created on A serves a pusher-js
// client and a `pusher` SDK trigger on B; a token created on A works on B; a key revoked on B
// closes its connection on A with 4001 and its signatures stop verifying there; concurrent
// updates on A and B converge to the same app on both; a delete on A is gone on B; the late
// node converges to the same state; changes made on two nodes while the broker is down reach
// every node once it is back. Every wait is a bounded wait for the condition.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startBroker } from './lib/broker.mjs';
import { appConfig, nodeLogs, startNode, stopNodes, waitFor, WAIT_MS } from './lib/cluster.mjs';
import { closeAllClients, connectedClient, serverSdk, subscribed, uniq, waitForEvent } from './lib/client.mjs';
import { closedWithin, pusherPath, rawConnect } from './lib/rawws.mjs';

const ADMIN = `rc_${'ab'.repeat(32)}`;
const CONFIG = `${appConfig()}\n[management]\nadmin_token = "${ADMIN}"\n`;

async function api(node, method, p, body, token = ADMIN) {
  const res = await fetch(`http://127.0.0.1:${node.port}${p}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

async function ok(node, method, p, body) {
  const r = await api(node, method, p, body);
  assert.ok(r.status >= 200 && r.status < 300, `${method} ${p} on ${node.id}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

/** What must agree over nodes: the API apps with name, settings and keys (secrets included). */
async function managedState(node) {
  const r = await api(node, 'GET', '/api/apps');
  if (r.status !== 200) return null;
  return r.body.apps
    .filter((a) => a.source === 'api')
    .map((a) => ({ id: a.id, name: a.name, settings: a.settings, keys: a.keys.map((k) => [k.key, k.secret]) }))
    .sort((x, y) => (x.id < y.id ? -1 : 1));
}

async function sameEverywhere(nodes, what) {
  let last;
  await waitFor(async () => {
    const states = await Promise.all(nodes.map(managedState));
    last = states;
    return states.every((s) => JSON.stringify(s) === JSON.stringify(states[0]));
  }, what, WAIT_MS, () => JSON.stringify(last));
  return last[0];
}

for (const kind of ['redis', 'nats']) {
  describe(`management over ${kind}`, () => {
    let broker;
    const nodes = [];
    before(async () => {
      broker = await startBroker(kind);
    });
    after(async () => {
      closeAllClients();
      await stopNodes(nodes);
      await broker?.close();
    });

    it('changes through any node reach every node, and a late node converges', async () => {
      const a = await startNode({ cluster: broker.url, nodeId: `${kind}-a`, config: CONFIG });
      nodes.push(a);
      const b = await startNode({ cluster: broker.url, nodeId: `${kind}-b`, config: CONFIG });
      nodes.push(b);
      try {
        // Created on A: B accepts a pusher-js connection and a signed trigger with it.
        const created = await ok(a, 'POST', '/api/apps', { id: `app-${kind}`, name: 'made on a', client_events: true });
        const app = { appId: created.id, key: created.keys[0].key, secret: created.keys[0].secret };
        await waitFor(async () => (await api(b, 'GET', `/api/apps/${app.appId}`)).status === 200, 'the app on B');
        const client = await connectedClient(b, app);
        const channel = uniq('private-repl-');
        const { channel: ch } = await subscribed(client, channel);
        const got = waitForEvent(ch, 'replicated', WAIT_MS);
        const res = await serverSdk(b, app).trigger(channel, 'replicated', { via: 'b' });
        assert.equal(res.status, 200);
        assert.deepEqual(await got, { via: 'b' });

        // A token created on A works on B.
        const tok = await ok(a, 'POST', '/api/tokens', { name: 'reader', scopes: ['apps:read'] });
        await waitFor(async () => (await api(b, 'GET', '/api/apps', undefined, tok.token)).status === 200, 'the token on B');

        // A second key added on A; its connection on A; revoked through B: A closes it with
        // 4001 and refuses its signatures.
        const k2 = await ok(a, 'POST', `/api/apps/${app.appId}/keys`);
        await waitFor(async () => {
          const v = await api(b, 'GET', `/api/apps/${app.appId}`);
          return v.body.keys?.some((k) => k.key === k2.key);
        }, 'the second key on B');
        const ws = await rawConnect({ port: a.port, path: pusherPath(k2.key) });
        const first = JSON.parse(await ws.nextMessage(5_000));
        assert.equal(first.event, 'pusher:connection_established', JSON.stringify(first));
        const sdk2 = serverSdk(a, { appId: app.appId, key: k2.key, secret: k2.secret });
        assert.equal((await sdk2.trigger('k2-ch', 'e', 1)).status, 200);
        await ok(b, 'DELETE', `/api/apps/${app.appId}/keys/${k2.key}`);
        const closed = await closedWithin(ws, WAIT_MS);
        assert.equal(closed.code, 4001, JSON.stringify(closed));
        await assert.rejects(sdk2.trigger('k2-ch', 'e', 2), (err) => err.status === 401);

        // Concurrent updates on A and B converge to one state on both.
        const writes = [];
        for (let i = 0; i < 5; i += 1) {
          writes.push(ok(a, 'PUT', `/api/apps/${app.appId}`, { name: `a-${i}`, max_connections: 100 + i }));
          writes.push(ok(b, 'PUT', `/api/apps/${app.appId}`, { name: `b-${i}`, max_connections: 200 + i }));
        }
        await Promise.all(writes);
        const converged = await sameEverywhere([a, b], 'A and B to agree after concurrent updates');
        const mine = converged.find((x) => x.id === app.appId);
        assert.match(mine.name, /^[ab]-\d$/);
        // The winner is one whole write, not a mix of two.
        assert.equal(mine.settings.max_connections, (mine.name.startsWith('a') ? 100 : 200) + Number(mine.name.slice(2)));

        // Created and deleted on A: gone on B.
        await ok(a, 'POST', '/api/apps', { id: `gone-${kind}` });
        await waitFor(async () => (await api(b, 'GET', `/api/apps/gone-${kind}`)).status === 200, 'the doomed app on B');
        await ok(a, 'DELETE', `/api/apps/gone-${kind}`);
        await waitFor(async () => (await api(b, 'GET', `/api/apps/gone-${kind}`)).status === 404, 'the delete on B');

        // A node started later converges: same apps (the deleted one absent), same tokens.
        const c = await startNode({ cluster: broker.url, nodeId: `${kind}-c`, config: CONFIG });
        nodes.push(c);
        const all = await sameEverywhere([a, b, c], 'the late node to converge');
        assert.ok(all.some((x) => x.id === app.appId), JSON.stringify(all));
        assert.ok(!all.some((x) => x.id === `gone-${kind}`), JSON.stringify(all));
        assert.equal((await api(c, 'GET', '/api/apps', undefined, tok.token)).status, 200);
        const lateClient = await connectedClient(c, app);
        assert.equal(lateClient.connection.state, 'connected');
      } catch (err) {
        err.message += `\n${nodeLogs(nodes)}`;
        throw err;
      }
    });

    it('changes made while the broker is down reach every node once it is back', async () => {
      const [a, b, c] = nodes;
      assert.ok(a && b && c, 'the first case left three nodes');
      try {
        await broker.stop();
        // Both writes succeed locally (the store is each node's own) and cannot be published.
        await ok(a, 'POST', '/api/apps', { id: `offline-${kind}`, name: 'made while down' });
        await ok(b, 'PUT', `/api/apps/app-${kind}`, { name: 'renamed while down' });
        await broker.start();
        const all = await sameEverywhere([a, b, c], 'every node to converge after the outage');
        assert.ok(all.some((x) => x.id === `offline-${kind}` && x.name === 'made while down'), JSON.stringify(all));
        assert.ok(all.some((x) => x.id === `app-${kind}` && x.name === 'renamed while down'), JSON.stringify(all));
      } catch (err) {
        err.message += `\n${nodeLogs(nodes)}`;
        throw err;
      }
    });
  });
}
