// Connection-level rejections: unknown app key (4001) as pusher-js experiences it, and the
// exact close codes on the wire. Needs: WebSocket endpoint only.

import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import {
  closeAllClients,
  createClient,
  delay,
  errorCode,
  record,
  waitForAnyState,
  waitForState,
} from './lib/client.mjs';
import { closedWithin, pusherPath, rawConnect } from './lib/rawws.mjs';

describe('connection rejections', { timeout: 90_000 }, () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  afterEach(() => closeAllClients());
  after(async () => {
    closeAllClients();
    if (server) await server.stop();
  });

  it('unknown app key: pusher-js gets 4001, ends `disconnected`/`failed` and does not reconnect', { timeout: 20_000 }, async () => {
    const pusher = createClient(server, { key: 'no-such-key' });
    assert.equal(pusher.connection.state, 'connecting');
    const states = record(pusher.connection, 'state_change');
    const errors = record(pusher.connection, 'error');

    // pusher-js maps 4001 (close code, or the code of a pusher:error sent before
    // connection_established) to the `refused` action: error event + state `disconnected`.
    await waitForAnyState(pusher, ['disconnected', 'failed'], 8_000);
    const codes = errors.events.map(([e]) => errorCode(e));
    assert.ok(codes.includes(4001), `expected an error with code 4001, got ${JSON.stringify(errors.events)}`);
    // `connecting` was entered synchronously in the constructor (before `states` was bound):
    // from there exactly one transition, straight to disconnected/failed, never `connected`.
    const current = states.events.map(([s]) => s.current);
    assert.equal(current.length, 1, `states after connecting: ${current.join(' -> ')}`);

    // No reconnect attempts afterwards (pusher-js would go back to `connecting`).
    const settled = states.count;
    await delay(3_000);
    const later = states.events.slice(settled).map(([s]) => s.current);
    assert.deepEqual(later, [], `kept reconnecting: ${later.join(' -> ')}`);
    assert.ok(['disconnected', 'failed'].includes(pusher.connection.state));
  });

  it('unknown app key on the wire: upgrade accepted, then close frame 4001', { timeout: 15_000 }, async () => {
    const ws = await rawConnect({ port: server.port, path: pusherPath('no-such-key') });
    const { code } = await closedWithin(ws, 5_000);
    assert.equal(code, 4001);
    // If anything was sent before the close it must be a pusher:error carrying 4001.
    for (const text of ws.messages) {
      const m = JSON.parse(text);
      assert.equal(m.event, 'pusher:error', text);
      assert.equal(m.data.code, 4001, text);
    }
  });

  it('missing protocol parameter: close 4008', { timeout: 15_000 }, async () => {
    const ws = await rawConnect({ port: server.port, path: '/app/app-key' });
    assert.equal((await closedWithin(ws, 5_000)).code, 4008);
  });

  it('unsupported protocol version: close 4007', { timeout: 15_000 }, async () => {
    const ws = await rawConnect({ port: server.port, path: '/app/app-key?protocol=3&client=js&version=8.6.0' });
    assert.equal((await closedWithin(ws, 5_000)).code, 4007);
  });

  it('the known key still connects alongside rejected ones', { timeout: 15_000 }, async () => {
    const bad = createClient(server, { key: 'no-such-key' });
    const good = createClient(server);
    await waitForState(good, 'connected', 5_000);
    await waitForAnyState(bad, ['disconnected', 'failed'], 8_000);
    assert.equal(good.connection.state, 'connected');
  });
});
