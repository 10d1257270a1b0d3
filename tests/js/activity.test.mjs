// Activity history (AltoHost's shape): an app with `activity_history_size` records CONNECT,
// SUBSCRIBE, CLIENT_EVENT, API_EVENT, UNSUBSCRIBE and DISCONNECT for real pusher-js clients and
// `pusher` SDK publishes, queryable through GET /apps/{id}/history (signed by the SDK) with
// event= filters, since/until, limit and hasMore; bounded per app; off by default.

import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { appToml, startServer } from './lib/server.mjs';
import { closeAllClients, closeClient, connectedClient, record, serverSdk, subscribed, uniq } from './lib/client.mjs';

const WAIT_MS = 5_000;

const CONFIG =
  appToml({ id: 'app-id', key: 'app-key', secret: 'app-secret', client_events: true, activity_history_size: 1000 }) +
  appToml({ id: 'small', key: 'small-key', secret: 'small-secret', activity_history_size: 3 }) +
  appToml({ id: 'plain', key: 'plain-key', secret: 'plain-secret', history_size: 10 });

/** GET /apps/{id}/history signed by the server SDK. */
async function history(sdk, params) {
  const res = await sdk.get({ path: '/history', params });
  assert.equal(res.status, 200);
  return res.json();
}

/** Polls (bounded) until `pred(body)` holds; returns the body. */
async function until(sdk, params, pred, what) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const body = await history(sdk, params);
    if (pred(body)) return body;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(body)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('activity history', { timeout: 120_000 }, () => {
  let server;
  before(async () => {
    server = await startServer({ config: CONFIG, args: ['--workers', '2'] });
  });
  afterEach(() => closeAllClients());
  after(async () => {
    closeAllClients();
    if (server) await server.stop();
  });

  it('records every kind with socket id, user id and event name, filterable', { timeout: 30_000 }, async () => {
    const sdk = serverSdk(server);
    const ch = uniq('presence-act-');
    const a = await connectedClient(server, { user: { user_id: 'ann', user_info: {} } });
    const b = await connectedClient(server, { user: { user_id: 'bob', user_info: {} } });
    const sidA = a.connection.socket_id;
    const { channel } = await subscribed(a, ch);
    const got = record((await subscribed(b, ch)).channel, 'client-wave');
    channel.trigger('client-wave', { hi: 1 });
    await got.next(WAIT_MS);
    await sdk.trigger(ch, 'server-news', { n: 1 });
    a.unsubscribe(ch);
    const body = await until(
      sdk,
      { channel: ch, limit: 50 },
      (v) => v.events.some((e) => e.event === 'UNSUBSCRIBE'),
      'UNSUBSCRIBE',
    );
    closeClient(a);
    const mine = body.events.filter((e) => e.socketId === sidA).map((e) => e.event);
    assert.deepEqual(mine.reverse(), ['SUBSCRIBE', 'CLIENT_EVENT', 'UNSUBSCRIBE']);
    const ce = body.events.find((e) => e.event === 'CLIENT_EVENT');
    assert.deepEqual(ce.metadata, { userId: 'ann', eventName: 'client-wave' });
    const api = body.events.find((e) => e.event === 'API_EVENT');
    assert.equal(api.channel, ch);
    assert.equal(api.metadata.eventName, 'server-news');
    for (const e of body.events) {
      assert.equal(typeof e.id, 'string');
      assert.ok(!Number.isNaN(Date.parse(e.createdAt)), e.createdAt);
    }
    assert.equal(new Set(body.events.map((e) => e.id)).size, body.events.length, 'ids are unique');

    // CONNECT / DISCONNECT have no channel; filter by kind.
    const conn = await until(
      sdk,
      { event: 'CONNECT,DISCONNECT', limit: 500 },
      (v) => v.events.some((e) => e.event === 'DISCONNECT' && e.socketId === sidA),
      'DISCONNECT',
    );
    assert.ok(conn.events.some((e) => e.event === 'CONNECT' && e.socketId === sidA));
    assert.ok(conn.events.every((e) => e.event === 'CONNECT' || e.event === 'DISCONNECT'));

    // limit + hasMore, since/until.
    const page = await history(sdk, { channel: ch, limit: 2 });
    assert.equal(page.count, 2);
    assert.equal(page.hasMore, true);
    const newest = page.events[0].createdAt;
    const after_ = await history(sdk, { channel: ch, since: newest, limit: 500 });
    assert.ok(after_.events.every((e) => e.createdAt >= newest));
    const before_ = await history(sdk, { channel: ch, until: '2000-01-01T00:00:00Z' });
    assert.equal(before_.count, 0);
    // Bad filters are 400.
    await assert.rejects(sdk.get({ path: '/history', params: { event: 'NOPE' } }), (e) => e.status === 400);
    await assert.rejects(sdk.get({ path: '/history', params: { limit: '501' } }), (e) => e.status === 400);
  });

  it('is bounded per app, and apps without it keep the event history', { timeout: 30_000 }, async () => {
    const small = serverSdk(server, { appId: 'small', key: 'small-key', secret: 'small-secret' });
    for (let i = 0; i < 12; i++) await small.trigger(uniq('bounded-'), 'e', String(i));
    // 3 per core, 2 cores: never more than 6, and the newest are kept.
    const v = await until(small, { limit: 500 }, (b) => b.events.some((e) => e.event === 'API_EVENT'), 'records');
    assert.ok(v.count <= 6, `bounded: ${v.count}`);
    assert.ok(v.events.every((e) => e.event === 'API_EVENT'));
    const plain = serverSdk(server, { appId: 'plain', key: 'plain-key', secret: 'plain-secret' });
    const ch = uniq('plain-');
    await plain.trigger(ch, 'ev', 'x');
    const p = await until(plain, { channel: ch }, (b) => b.count === 1, 'event history');
    assert.equal(p.events[0].event, 'ev');
    assert.equal(p.events[0].data, 'x');
  });
});
