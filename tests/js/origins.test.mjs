// Per-app `allowed_origins` as pusher-js experiences it: an origin outside the list is closed
// with 4009 after the upgrade, which pusher-js treats as `refused`: it ends `disconnected` and
// does not reconnect in a loop; an allowed origin connects. pusher-js in Node sends no Origin,
// so this file makes its WebSocket send one (Pusher.Runtime.createWebSocket, process-wide:
// this file runs in its own process).

import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import {
  Pusher,
  closeAllClients,
  createClient,
  delay,
  errorCode,
  record,
  waitForAnyState,
  waitForState,
} from './lib/client.mjs';

const CONFIG = `
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
allowed_origins = ["*.example.com"]
`;

let origin = null;
const FayeClient = Pusher.Runtime.getWebSocketAPI();
Pusher.Runtime.createWebSocket = (url) =>
  new FayeClient(url, [], origin ? { headers: { Origin: origin } } : {});

async function refusedByOrigin(server) {
  const text = await (await fetch(`http://127.0.0.1:${server.port}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('ringcast_connections_refused_total{reason="origin_not_allowed"}'));
  assert.ok(line, 'origin refusals are exported');
  return Number(line.split(' ').pop());
}

describe('allowed_origins', { timeout: 60_000 }, () => {
  let server;
  before(async () => {
    server = await startServer({ config: CONFIG });
  });
  afterEach(() => closeAllClients());
  after(async () => {
    closeAllClients();
    if (server) await server.stop();
  });

  it('an allowed origin connects', { timeout: 15_000 }, async () => {
    origin = 'https://app.example.com';
    const pusher = createClient(server);
    await waitForState(pusher, 'connected', 8_000);
  });

  it('another origin gets 4009, ends disconnected and does not reconnect', { timeout: 20_000 }, async () => {
    origin = 'https://evil.test';
    const before = await refusedByOrigin(server);
    const pusher = createClient(server);
    const states = record(pusher.connection, 'state_change');
    const errors = record(pusher.connection, 'error');
    await waitForAnyState(pusher, ['disconnected', 'failed'], 8_000);
    const codes = errors.events.map(([e]) => errorCode(e));
    assert.ok(codes.includes(4009), `expected an error with code 4009, got ${JSON.stringify(errors.events)}`);
    assert.ok(!states.events.some(([s]) => s.current === 'connected'), 'never connected');
    // No reconnect attempts afterwards (pusher-js would go back to `connecting`), and the
    // server saw exactly one attempt.
    const settled = states.count;
    await delay(3_000);
    const later = states.events.slice(settled).map(([s]) => s.current);
    assert.deepEqual(later, [], `kept reconnecting: ${later.join(' -> ')}`);
    assert.equal(await refusedByOrigin(server), before + 1);
  });
});
