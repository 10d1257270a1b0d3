// Connection handshake as seen by pusher-js (and, for the exact first frame, a raw socket).
// Needs: WebSocket endpoint only.

import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import { closeAllClients, connectedClient, createClient, waitForEvent, waitForState } from './lib/client.mjs';
import { pusherPath, rawConnect } from './lib/rawws.mjs';

const SOCKET_ID_RE = /^\d+\.\d+$/;

describe('connection', { timeout: 60_000 }, () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  afterEach(() => closeAllClients());
  after(async () => {
    closeAllClients();
    if (server) await server.stop();
  });

  it('pusher-js reaches `connected` with a socket_id like "123.456"', { timeout: 15_000 }, async () => {
    const pusher = createClient(server);
    const states = [];
    pusher.connection.bind('state_change', (s) => states.push(s.current));
    assert.equal(pusher.connection.state, 'connecting');
    await waitForState(pusher, 'connected', 5_000);
    assert.match(pusher.connection.socket_id, SOCKET_ID_RE);
    // (`connecting` is entered synchronously inside the constructor, before we can bind.)
    assert.deepEqual(states, ['connected']);
    // pusher-js takes min(120 s, activity_timeout * 1000); a missing/zero value never reaches `connected`.
    assert.ok(pusher.connection.activityTimeout > 0 && pusher.connection.activityTimeout <= 120_000,
      `activityTimeout=${pusher.connection.activityTimeout}`);
  });

  it('socket ids are unique per connection', { timeout: 15_000 }, async () => {
    const ids = new Set();
    for (let i = 0; i < 5; i++) {
      const p = await connectedClient(server);
      assert.match(p.connection.socket_id, SOCKET_ID_RE);
      ids.add(p.connection.socket_id);
    }
    assert.equal(ids.size, 5, `duplicate socket ids: ${[...ids].join(', ')}`);
  });

  it('first frame is pusher:connection_established with JSON-string data', { timeout: 15_000 }, async () => {
    const ws = await rawConnect({ port: server.port, path: pusherPath('app-key') });
    try {
      const first = JSON.parse(await ws.nextMessage(5_000));
      assert.equal(first.event, 'pusher:connection_established');
      assert.equal(typeof first.data, 'string', `data must be a JSON string, got ${JSON.stringify(first.data)}`);
      const data = JSON.parse(first.data);
      assert.match(data.socket_id, SOCKET_ID_RE);
      assert.ok(Number.isInteger(data.activity_timeout) && data.activity_timeout > 0,
        `activity_timeout=${data.activity_timeout}`);
    } finally {
      ws.destroy();
    }
  });

  it('answers pusher:ping with pusher:pong (pusher-js liveness check)', { timeout: 15_000 }, async () => {
    const pusher = await connectedClient(server);
    const pong = waitForEvent(pusher.connection, 'message', 5_000, {
      filter: (m) => m.event === 'pusher:pong',
    });
    assert.equal(pusher.send_event('pusher:ping', {}), true);
    await pong;
    // The real activity check: pusher-js pings and reconnects if no pong arrives in pongTimeout.
    pusher.connection.sendActivityCheck();
    await waitForEvent(pusher.connection, 'message', 5_000, { filter: (m) => m.event === 'pusher:pong' });
    assert.equal(pusher.connection.state, 'connected');
  });
});
