// Graceful shutdown: on SIGTERM/SIGINT connected clients are closed with 4200 ("reconnect now")
// and the process exits promptly; pusher-js then tries to reconnect. Each test starts its own
// server because it stops it. Needs: WebSocket endpoint only.

import { afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import {
  closeAllClients,
  connectedClient,
  errorCode,
  record,
  subscribed,
  uniq,
  waitForAnyState,
} from './lib/client.mjs';
import { closedWithin, pusherPath, rawConnect } from './lib/rawws.mjs';

const EXIT_WITHIN_MS = 10_000;

describe('shutdown', { timeout: 90_000 }, () => {
  let server;
  afterEach(async () => {
    closeAllClients();
    if (server) await server.stop({ timeoutMs: 2_000 });
    server = null;
  });

  it('SIGTERM: pusher-js clients see close 4200, then go back to connecting/unavailable', { timeout: 30_000 }, async () => {
    server = await startServer();
    const opts = { options: { unavailableTimeout: 2_000 } };
    const clients = [await connectedClient(server, opts), await connectedClient(server, opts)];
    await subscribed(clients[0], uniq('public-'));
    await subscribed(clients[1], uniq('private-'));
    const errors = clients.map((c) => record(c.connection, 'error'));
    const states = clients.map((c) => record(c.connection, 'state_change'));

    const exit = await server.stop({ timeoutMs: EXIT_WITHIN_MS });
    assert.equal(exit.killed, false, `did not exit within ${EXIT_WITHIN_MS} ms of SIGTERM\n${server.logs()}`);
    assert.equal(exit.signal, null, `died from ${exit.signal} instead of handling it\n${server.logs()}`);
    assert.equal(exit.code, 0, `exit code ${exit.code}\n${server.logs()}`);

    for (let i = 0; i < clients.length; i++) {
      // A close code on an open connection reaches pusher-js' connection manager as
      // {type:'WebSocketError', error:{type:'PusherError', data:{code}}} with action `retry` for 4200.
      const state = await waitForAnyState(clients[i], ['connecting', 'unavailable'], 5_000);
      assert.ok(state);
      const viaClose = errors[i].events.map(([e]) => e).filter((e) => e.type === 'WebSocketError');
      assert.ok(viaClose.some((e) => errorCode(e) === 4200),
        `client ${i}: expected close code 4200, errors: ${JSON.stringify(errors[i].events)}`);
      // pusher-js keeps trying (server is gone): connecting, then unavailable after unavailableTimeout.
      await waitForAnyState(clients[i], ['unavailable'], 6_000);
      const seq = states[i].events.map(([s]) => s.current);
      assert.equal(seq[0], 'connecting', `client ${i} states: ${seq.join(' -> ')}`);
      assert.ok(!seq.includes('disconnected') && !seq.includes('failed'), `client ${i} gave up: ${seq.join(' -> ')}`);
    }
  });

  for (const signal of ['SIGTERM', 'SIGINT']) {
    it(`${signal}: close frame 4200 on the wire, then the process exits`, { timeout: 30_000 }, async () => {
      server = await startServer();
      const ws = await rawConnect({ port: server.port, path: pusherPath('app-key') });
      const first = JSON.parse(await ws.nextMessage(5_000));
      assert.equal(first.event, 'pusher:connection_established');
      const stopping = server.stop({ signal, timeoutMs: EXIT_WITHIN_MS });
      const { code } = await closedWithin(ws, EXIT_WITHIN_MS);
      const exit = await stopping;
      assert.equal(code, 4200, `close code (1006 = no close frame)`);
      assert.equal(exit.killed, false, `did not exit within ${EXIT_WITHIN_MS} ms of ${signal}\n${server.logs()}`);
      assert.equal(exit.signal, null, `died from ${exit.signal}\n${server.logs()}`);
    });
  }
});
