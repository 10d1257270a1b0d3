// The Pusher HTTP API driven by the official `pusher` Node SDK (5.x), with stock pusher-js
// clients asserting what they receive: trigger / triggerBatch (+ info), socket_id exclusion,
// GET channels / channel / users, sendToUser to a pusher-js client signed in with
// authenticateUser, terminateUserConnections (close 4009, no auto-reconnect), and refusals
// (401 wrong secret, 413 oversize data, 400 limits, 404 unknown app).
// Needs: the HTTP API on the public port (the default).

import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import {
  closeAllClients,
  connectedClient,
  delay,
  errorCode,
  record,
  serverSdk,
  subscribed,
  uniq,
  waitForEvent,
  waitForState,
} from './lib/client.mjs';

const QUIET_MS = 1_000;

async function okJson(res) {
  assert.equal(res.status, 200);
  return res.json();
}

/** Asserts that `promise` rejects with a RequestError of `status` and a JSON {error, code} body. */
async function rejectsWith(promise, status, code) {
  await assert.rejects(promise, (err) => {
    assert.equal(err.status, status, `status ${err.status} body ${err.body}`);
    const body = JSON.parse(err.body);
    assert.equal(body.code, code, err.body);
    assert.equal(typeof body.error, 'string');
    return true;
  });
}

/**
 * A pusher-js client signed in as `user` (pusher.signin() with a userAuthentication handler
 * that signs with the Node SDK's authenticateUser), once its #server-to-user channel is
 * subscribed.
 */
async function signedInClient(server, sdk, user) {
  const userAuthentication = {
    customHandler: ({ socketId }, callback) => {
      try {
        callback(null, sdk.authenticateUser(socketId, user));
      } catch (err) {
        callback(err, null);
      }
    },
  };
  const p = await connectedClient(server, { options: { userAuthentication } });
  const ready = waitForEvent(p.connection, 'message', 5_000, {
    filter: (m) => m.event === 'pusher_internal:subscription_succeeded' && m.channel === `#server-to-user-${user.id}`,
  });
  const success = waitForEvent(p.connection, 'message', 5_000, {
    filter: (m) => m.event === 'pusher:signin_success',
  });
  p.signin();
  const ok = await success;
  assert.deepEqual(JSON.parse(ok.data.user_data), user);
  await ready;
  return p;
}

describe('REST API via the pusher Node SDK', { timeout: 120_000 }, () => {
  let server;
  let sdk;
  before(async () => {
    server = await startServer();
    sdk = serverSdk(server);
  });
  afterEach(() => closeAllClients());
  after(async () => {
    closeAllClients();
    if (server) await server.stop();
  });

  it('trigger: a public-channel subscriber receives the event data', { timeout: 20_000 }, async () => {
    const name = uniq('public-');
    const p = await connectedClient(server);
    const { channel } = await subscribed(p, name);
    const got = record(channel, 'order-shipped');
    const res = await sdk.trigger(name, 'order-shipped', { id: 7, items: ['a', 'b'], ok: true });
    assert.deepEqual(await okJson(res), {});
    const [data, metadata] = await got.next(5_000);
    assert.deepEqual(data, { id: 7, items: ['a', 'b'], ok: true });
    assert.deepEqual(metadata, {});
    await delay(QUIET_MS / 2);
    assert.equal(got.count, 1);
  });

  it('trigger: data string is delivered verbatim; Laravel-style event names work', { timeout: 20_000 }, async () => {
    const name = uniq('private-');
    const p = await connectedClient(server);
    const raw = record(p.connection, 'message');
    await subscribed(p, name);
    const got = waitForEvent(p.channel(name), 'App\\Events\\OrderShipped', 5_000);
    await okJson(await sdk.trigger(name, 'App\\Events\\OrderShipped', 'not json at all'));
    assert.equal(await got, 'not json at all');
    const frame = raw.events.map(([m]) => m).find((m) => m.event === 'App\\Events\\OrderShipped');
    assert.equal(frame.channel, name);
    raw.stop();
  });

  it('trigger to several channels reaches each channel\'s subscribers once', { timeout: 20_000 }, async () => {
    const names = [uniq('public-'), uniq('private-'), uniq('presence-')];
    const p1 = await connectedClient(server, { user: { user_id: 'u1', user_info: {} } });
    const p2 = await connectedClient(server, { user: { user_id: 'u2', user_info: {} } });
    const recs = [];
    for (const n of names) {
      recs.push(record((await subscribed(p1, n)).channel, 'multi'));
      recs.push(record((await subscribed(p2, n)).channel, 'multi'));
    }
    await okJson(await sdk.trigger(names, 'multi', { x: 1 }));
    for (const r of recs) {
      const [data, metadata] = await r.next(5_000);
      assert.deepEqual(data, { x: 1 });
      assert.deepEqual(metadata, {}, 'server events carry no user_id');
    }
    await delay(QUIET_MS);
    assert.deepEqual(recs.map((r) => r.count), [1, 1, 1, 1, 1, 1]);
  });

  it('trigger with socket_id excludes that connection only', { timeout: 20_000 }, async () => {
    const name = uniq('public-');
    const a = await connectedClient(server);
    const b = await connectedClient(server);
    const aGot = record((await subscribed(a, name)).channel, 'excl');
    const bGot = record((await subscribed(b, name)).channel, 'excl');
    await okJson(await sdk.trigger(name, 'excl', { n: 1 }, { socket_id: a.connection.socket_id }));
    assert.deepEqual((await bGot.next(5_000))[0], { n: 1 });
    await delay(QUIET_MS);
    assert.equal(aGot.count, 0, 'excluded socket received the event');
  });

  it('triggerBatch: every event is delivered to its channel, in order', { timeout: 20_000 }, async () => {
    const c1 = uniq('public-');
    const c2 = uniq('private-');
    const p = await connectedClient(server);
    const r1 = record((await subscribed(p, c1)).channel, 'batch-ev');
    const r2 = record((await subscribed(p, c2)).channel, 'batch-ev');
    const res = await sdk.triggerBatch([
      { channel: c1, name: 'batch-ev', data: { i: 1 } },
      { channel: c2, name: 'batch-ev', data: { i: 2 } },
      { channel: c1, name: 'batch-ev', data: { i: 3 } },
    ]);
    assert.deepEqual(await okJson(res), {});
    assert.deepEqual((await r1.next(5_000))[0], { i: 1 });
    assert.deepEqual((await r1.next(5_000))[0], { i: 3 });
    assert.deepEqual((await r2.next(5_000))[0], { i: 2 });
    await delay(QUIET_MS / 2);
    assert.equal(r1.count + r2.count, 3);
  });

  it('trigger with info returns channel counts', { timeout: 20_000 }, async () => {
    const pres = uniq('presence-');
    const pub = uniq('public-');
    const a1 = await connectedClient(server, { user: { user_id: 'ua', user_info: {} } });
    const a2 = await connectedClient(server, { user: { user_id: 'ua', user_info: {} } });
    const b = await connectedClient(server, { user: { user_id: 'ub', user_info: {} } });
    for (const p of [a1, a2, b]) await subscribed(p, pres);
    await subscribed(a1, pub);
    await subscribed(b, pub);
    const body = await okJson(await sdk.trigger([pres, pub], 'counted', {}, { info: 'user_count,subscription_count' }));
    assert.equal(body.channels[pres].user_count, 2);
    assert.equal(body.channels[pub].subscription_count, 2);
    assert.equal(body.channels[pub].user_count, undefined, 'user_count is presence-only');
  });

  it('a request signed with the wrong secret is refused (401) and nothing is delivered', { timeout: 20_000 }, async () => {
    const name = uniq('public-');
    const p = await connectedClient(server);
    const got = record((await subscribed(p, name)).channel, 'forged');
    const forger = serverSdk(server, { secret: 'wrong-secret' });
    await assert.rejects(forger.trigger(name, 'forged', {}), (err) => {
      assert.equal(err.status, 401, `status ${err.status} body ${err.body}`);
      return true;
    });
    await delay(QUIET_MS);
    assert.equal(got.count, 0);
  });

  it('GET /channels lists occupied channels; /channels/{name}/users lists presence users', { timeout: 20_000 }, async () => {
    const pres = uniq('presence-');
    const a = await connectedClient(server, { user: { user_id: 'list-a', user_info: {} } });
    const b = await connectedClient(server, { user: { user_id: 'list-b', user_info: {} } });
    await subscribed(a, pres);
    await subscribed(b, pres);
    const channels = await okJson(await sdk.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } }));
    assert.equal(channels.channels[pres]?.user_count, 2, JSON.stringify(channels));
    const users = await okJson(await sdk.get({ path: `/channels/${pres}/users` }));
    assert.deepEqual(users.users.map((u) => u.id).sort(), ['list-a', 'list-b']);
  });

  it('GET /channels/{name}: occupied always, user_count and subscription_count when asked', { timeout: 20_000 }, async () => {
    const pres = uniq('presence-');
    const a1 = await connectedClient(server, { user: { user_id: 'ch-a', user_info: {} } });
    const a2 = await connectedClient(server, { user: { user_id: 'ch-a', user_info: {} } });
    await subscribed(a1, pres);
    await subscribed(a2, pres);
    const info = await okJson(await sdk.get({ path: `/channels/${pres}`, params: { info: 'user_count,subscription_count' } }));
    assert.deepEqual(info, { occupied: true, user_count: 1, subscription_count: 2 });
    assert.deepEqual(await okJson(await sdk.get({ path: `/channels/${pres}` })), { occupied: true });
    assert.deepEqual(await okJson(await sdk.get({ path: `/channels/${uniq('nobody-')}` })), { occupied: false });
    await rejectsWith(sdk.get({ path: `/channels/${uniq('public-')}`, params: { info: 'user_count' } }), 400, 'bad_request');
    await rejectsWith(sdk.get({ path: `/channels/${uniq('public-')}/users` }), 400, 'bad_request');
  });

  it('GET /channels: info=user_count requires the presence- prefix; subscription_count is honoured', { timeout: 20_000 }, async () => {
    const pub = uniq('public-');
    const p = await connectedClient(server);
    await subscribed(p, pub);
    await rejectsWith(sdk.get({ path: '/channels', params: { info: 'user_count' } }), 400, 'bad_request');
    const body = await okJson(await sdk.get({ path: '/channels', params: { filter_by_prefix: pub, info: 'subscription_count' } }));
    assert.deepEqual(body, { channels: { [pub]: { subscription_count: 1 } } });
  });

  it('triggerBatch with info answers per item, index-aligned', { timeout: 20_000 }, async () => {
    const pres = uniq('presence-');
    const pub = uniq('public-');
    const a = await connectedClient(server, { user: { user_id: 'tb-a', user_info: {} } });
    const got = record((await subscribed(a, pres)).channel, 'tb');
    await subscribed(a, pub);
    const body = await okJson(await sdk.triggerBatch([
      { channel: pres, name: 'tb', data: { i: 1 }, info: 'user_count,subscription_count' },
      { channel: pub, name: 'tb', data: { i: 2 } },
      { channel: pub, name: 'tb', data: { i: 3 }, info: 'subscription_count' },
    ]));
    assert.deepEqual(body, { batch: [{ user_count: 1, subscription_count: 1 }, {}, { subscription_count: 1 }] });
    assert.deepEqual((await got.next(5_000))[0], { i: 1 });
  });

  it('sendToUser reaches every pusher-js connection signed in as that user, and only those', { timeout: 20_000 }, async () => {
    const id = uniq('user-');
    const user = { id, user_info: { name: 'Ada' } };
    const u1 = await signedInClient(server, sdk, user);
    const u2 = await signedInClient(server, sdk, user);
    const other = await signedInClient(server, sdk, { id: uniq('other-') });
    const r1 = record(u1.user, 'private-note');
    const r2 = record(u2.user, 'private-note');
    const r3 = record(other.user, 'private-note');
    assert.deepEqual(await okJson(await sdk.sendToUser(id, 'private-note', { text: 'hi' })), {});
    assert.deepEqual((await r1.next(5_000))[0], { text: 'hi' });
    assert.deepEqual((await r2.next(5_000))[0], { text: 'hi' });
    await delay(QUIET_MS);
    assert.equal(r1.count + r2.count, 2);
    assert.equal(r3.count, 0);
  });

  it('terminateUserConnections closes that user\'s connections with 4009 and they stay disconnected', { timeout: 20_000 }, async () => {
    const id = uniq('ban-');
    const victim1 = await signedInClient(server, sdk, { id });
    const victim2 = await signedInClient(server, sdk, { id });
    const bystander = await signedInClient(server, sdk, { id: uniq('ok-') });
    const errors = [victim1, victim2].map((p) => waitForEvent(p.connection, 'error', 5_000, {
      filter: (e) => errorCode(e) === 4009,
    }));
    assert.deepEqual(await okJson(await sdk.terminateUserConnections(id)), {});
    await Promise.all(errors);
    await waitForState(victim1, 'disconnected', 5_000);
    await waitForState(victim2, 'disconnected', 5_000);
    await delay(QUIET_MS * 1.5);
    // 4009 is a "refused" close for pusher-js: no automatic reconnection.
    assert.equal(victim1.connection.state, 'disconnected');
    assert.equal(victim2.connection.state, 'disconnected');
    assert.equal(bystander.connection.state, 'connected');
    // The app may let the user back in explicitly.
    victim1.connect();
    await waitForState(victim1, 'connected', 5_000);
  });

  it('authorizeChannel signatures subscribe private and presence channels', { timeout: 20_000 }, async () => {
    const priv = uniq('private-');
    const pres = uniq('presence-');
    const p = await connectedClient(server, { user: { user_id: 'authz', user_info: { n: 1 } } });
    await subscribed(p, priv);
    const { data: members } = await subscribed(p, pres);
    assert.deepEqual(members.me, { id: 'authz', info: { n: 1 } });
    assert.equal(p.authCalls.length, 2);
  });

  it('refusals: oversize data 413, too many channels 400, malformed JSON 400, unknown app 404', { timeout: 20_000 }, async () => {
    const name = uniq('public-');
    const p = await connectedClient(server);
    const got = record((await subscribed(p, name)).channel, 'refused');
    await rejectsWith(sdk.post({ path: '/events', body: { name: 'refused', channels: [name], data: 'x'.repeat(10 * 1024 + 1) } }), 413, 'event_too_large');
    const many = Array.from({ length: 101 }, (_, i) => `${name}-${i}`);
    await rejectsWith(sdk.post({ path: '/events', body: { name: 'refused', channels: many, data: '1' } }), 400, 'too_many_channels');
    const batch = Array.from({ length: 11 }, () => ({ name: 'refused', channel: name, data: '1' }));
    await rejectsWith(sdk.post({ path: '/batch_events', body: { batch } }), 400, 'too_many_events');
    await rejectsWith(sdk.post({ path: '/events', body: { channels: [name], data: '1' } }), 400, 'bad_request');
    const stranger = serverSdk(server, { appId: 'no-such-app' });
    await rejectsWith(stranger.trigger(name, 'refused', {}), 404, 'unknown_app');
    await delay(QUIET_MS);
    assert.equal(got.count, 0);
  });
});
