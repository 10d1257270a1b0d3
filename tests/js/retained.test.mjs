// Cache channels and subscription counts as pusher-js sees them. Needs: WebSocket endpoint
// and --config (subscription_count = true for the app).

import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { appToml, DEFAULT_APP, startServer } from './lib/server.mjs';
import { closeAllClients, closeClient, connectedClient, subscribed, uniq, waitForEvent } from './lib/client.mjs';

describe('subscription counts and cache channels', { timeout: 120_000 }, () => {
  let server;
  before(async () => {
    server = await startServer({
      config: appToml({
        id: DEFAULT_APP.appId,
        key: DEFAULT_APP.key,
        secret: DEFAULT_APP.secret,
        client_events: true,
        subscription_count: true,
      }),
    });
  });
  afterEach(() => closeAllClients());
  after(async () => {
    closeAllClients();
    if (server) await server.stop();
  });

  it('pusher-js receives pusher:subscription_count and tracks channel.subscriptionCount', async () => {
    const name = uniq('counted');
    const a = await connectedClient(server);
    const chA = a.subscribe(name);
    const first = await waitForEvent(chA, 'pusher:subscription_count');
    assert.equal(first.subscription_count, 1);
    const b = await connectedClient(server);
    const countOnA = waitForEvent(chA, 'pusher:subscription_count');
    await subscribed(b, name);
    assert.equal((await countOnA).subscription_count, 2);
    assert.equal(chA.subscriptionCount, 2);
    const down = waitForEvent(chA, 'pusher:subscription_count');
    closeClient(b);
    assert.equal((await down).subscription_count, 1);
    assert.equal(chA.subscriptionCount, 1);
  });

  it('a cache channel replays the last client event to a late subscriber, or reports a miss', async () => {
    const name = uniq('private-cache-prices');
    const a = await connectedClient(server);
    const chA = a.subscribe(name);
    // Nothing cached yet: pusher:cache_miss right after subscription_succeeded.
    await waitForEvent(chA, 'pusher:cache_miss');
    assert.ok(chA.subscribed);
    // A witness already subscribed: once it has the event, the owner has recorded it.
    const w = await connectedClient(server);
    const chW = w.subscribe(name);
    await waitForEvent(chW, 'pusher:cache_miss');
    const seen = waitForEvent(chW, 'client-price');
    assert.equal(chA.trigger('client-price', { usd: 42 }), true);
    assert.deepEqual(await seen, { usd: 42 });
    const probe = await connectedClient(server);
    const chP = probe.subscribe(name);
    const replay = await waitForEvent(chP, 'client-price');
    assert.deepEqual(replay, { usd: 42 });
  });
});
