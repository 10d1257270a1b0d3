// Client events (client-*) between pusher-js clients. Needs: WebSocket endpoint only
// (the last describe block also needs --config with [[apps]] client_events = false).

import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { appToml, DEFAULT_APP, startServer } from './lib/server.mjs';
import {
  closeAllClients,
  connectedClient,
  delay,
  record,
  subscribed,
  uniq,
  waitForEvent,
} from './lib/client.mjs';

const QUIET_MS = 1_000;

/** Every decoded frame this client receives with event `name` (any channel). */
function framesNamed(pusher, name) {
  const r = record(pusher.connection, 'message');
  return {
    get list() {
      return r.events.map(([m]) => m).filter((m) => m.event === name);
    },
    stop: () => r.stop(),
  };
}

describe('client events', { timeout: 120_000 }, () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  afterEach(() => closeAllClients());
  after(async () => {
    closeAllClients();
    if (server) await server.stop();
  });

  it('private channel: B receives A\'s client event data exactly; A does not get its own', { timeout: 20_000 }, async () => {
    const name = uniq('private-');
    const a = await connectedClient(server);
    const b = await connectedClient(server);
    const { channel: ach } = await subscribed(a, name);
    const { channel: bch } = await subscribed(b, name);
    const aOwn = record(ach, 'client-hello');
    const aRaw = framesNamed(a, 'client-hello');
    const bGot = record(bch, 'client-hello');

    const payloads = [
      { msg: 'hi', n: 1, nested: { list: [1, 2, 3], ok: true, none: null } },
      { text: 'ünïcödé ✓ 日本語', quote: '"\\' },
      'plain string, not JSON',
      ['array', 2, { three: 3 }],
      12345,
    ];
    for (const p of payloads) {
      assert.equal(ach.trigger('client-hello', p), true);
      const [data, metadata] = await bGot.next(5_000);
      assert.deepEqual(data, p);
      assert.deepEqual(metadata, {}, 'no user_id on a private channel');
    }

    // Round trip B -> A as an ordering barrier, then make sure A never saw its own events.
    const back = waitForEvent(ach, 'client-reply', 5_000);
    bch.trigger('client-reply', { ok: 1 });
    assert.deepEqual(await back, { ok: 1 });
    await delay(QUIET_MS);
    assert.equal(aOwn.count, 0, `sender received its own client event: ${JSON.stringify(aOwn.events)}`);
    assert.equal(aRaw.list.length, 0);
    assert.equal(bGot.count, payloads.length, 'each client event delivered exactly once');
    aRaw.stop();
  });

  it('fan-out: every other subscriber receives it once, the sender none', { timeout: 20_000 }, async () => {
    const name = uniq('private-');
    const clients = [];
    for (let i = 0; i < 4; i++) clients.push(await connectedClient(server));
    const chans = [];
    for (const c of clients) chans.push((await subscribed(c, name)).channel);
    const recs = chans.map((ch) => record(ch, 'client-fan'));
    chans[0].trigger('client-fan', { from: 0 });
    for (let i = 1; i < recs.length; i++) assert.deepEqual((await recs[i].next(5_000))[0], { from: 0 });
    await delay(QUIET_MS);
    assert.deepEqual(recs.map((r) => r.count), [0, 1, 1, 1]);
  });

  it('presence channel: receiver gets metadata.user_id = sender\'s user id', { timeout: 20_000 }, async () => {
    const name = uniq('presence-');
    const a = await connectedClient(server, { user: { user_id: 'user-a', user_info: { n: 'A' } } });
    const b = await connectedClient(server, { user: { user_id: 'user-b', user_info: { n: 'B' } } });
    const { channel: ach } = await subscribed(a, name);
    const { channel: bch } = await subscribed(b, name);
    const aOwn = record(ach, 'client-typing');

    const got = waitForEvent(bch, 'client-typing', 5_000, { all: true });
    ach.trigger('client-typing', { typing: true });
    const [data, metadata] = await got;
    assert.deepEqual(data, { typing: true });
    assert.deepEqual(metadata, { user_id: 'user-a' });

    const back = waitForEvent(ach, 'client-typing', 5_000, { all: true });
    bch.trigger('client-typing', { typing: false });
    const [data2, meta2] = await back;
    assert.deepEqual(data2, { typing: false });
    assert.deepEqual(meta2, { user_id: 'user-b' });
    await delay(QUIET_MS);
    assert.equal(aOwn.count, 1, 'A got exactly B\'s event, never its own');
  });

  it('public channel: client event is rejected with pusher:error and not delivered', { timeout: 20_000 }, async () => {
    const name = uniq('public-');
    const a = await connectedClient(server);
    const b = await connectedClient(server);
    const { channel: ach } = await subscribed(a, name);
    await subscribed(b, name);
    const bRaw = framesNamed(b, 'client-public');
    const aErrors = record(a.connection, 'error');
    const aStates = record(a.connection, 'state_change');

    ach.trigger('client-public', { nope: true }); // pusher-js sends it; the server must refuse
    const [err] = await aErrors.next(5_000);
    assert.equal(err.type, 'PusherError', JSON.stringify(err));
    assert.equal(typeof err.data.message, 'string');
    await delay(QUIET_MS);
    assert.equal(bRaw.list.length, 0, `delivered on a public channel: ${JSON.stringify(bRaw.list)}`);
    assert.equal(a.connection.state, 'connected');
    assert.equal(aStates.count, 0, 'rejection must not close the connection');
    bRaw.stop();
  });

  it('events not named client-* from a client are never relayed', { timeout: 20_000 }, async () => {
    const name = uniq('private-');
    const a = await connectedClient(server);
    const b = await connectedClient(server);
    await subscribed(a, name);
    const { channel: bch } = await subscribed(b, name);
    const bRaw = record(b.connection, 'message');
    // pusher-js refuses non-client- names in channel.trigger, so send the frame directly.
    a.send_event('my-event', { sneaky: true }, name);
    a.send_event('pusher_internal:member_added', { user_id: 'x', user_info: {} }, name);
    // barrier: a real client event after them
    const marker = waitForEvent(bch, 'client-marker', 5_000);
    a.channel(name).trigger('client-marker', {});
    await marker;
    await delay(QUIET_MS / 2);
    const leaked = bRaw.events.map(([m]) => m).filter((m) => m.event === 'my-event' || m.event === 'pusher_internal:member_added');
    assert.deepEqual(leaked, []);
    assert.equal(a.connection.state, 'connected');
    bRaw.stop();
  });

  it('a client not subscribed to the channel cannot send client events into it', { timeout: 20_000 }, async () => {
    const name = uniq('private-');
    const b = await connectedClient(server);
    await subscribed(b, name);
    const bRaw = framesNamed(b, 'client-outsider');
    const outsider = await connectedClient(server);
    outsider.send_event('client-outsider', { x: 1 }, name);
    await delay(QUIET_MS);
    assert.equal(bRaw.list.length, 0, `delivered from a non-subscriber: ${JSON.stringify(bRaw.list)}`);
    assert.equal(outsider.connection.state, 'connected');
    bRaw.stop();
  });

  it('after unsubscribe a client no longer receives the channel\'s client events', { timeout: 20_000 }, async () => {
    const name = uniq('private-');
    const a = await connectedClient(server);
    const b = await connectedClient(server);
    const c = await connectedClient(server);
    const { channel: ach } = await subscribed(a, name);
    await subscribed(b, name);
    const { channel: cch } = await subscribed(c, name);
    b.unsubscribe(name);
    await delay(300);
    const bRaw = framesNamed(b, 'client-after');
    const cGot = waitForEvent(cch, 'client-after', 5_000);
    ach.trigger('client-after', { n: 1 });
    await cGot; // delivered to the remaining subscriber
    await delay(QUIET_MS);
    assert.equal(bRaw.list.length, 0, `unsubscribed client got: ${JSON.stringify(bRaw.list)}`);
    bRaw.stop();
  });
});

describe('client events disabled for the app (config client_events = false)', { timeout: 60_000 }, () => {
  let server;
  before(async () => {
    server = await startServer({
      config: appToml({
        id: DEFAULT_APP.appId,
        key: DEFAULT_APP.key,
        secret: DEFAULT_APP.secret,
        client_events: false,
      }),
    });
  });
  afterEach(() => closeAllClients());
  after(async () => {
    closeAllClients();
    if (server) await server.stop();
  });

  it('client event is rejected with pusher:error and not delivered', { timeout: 20_000 }, async () => {
    const name = uniq('private-');
    const a = await connectedClient(server);
    const b = await connectedClient(server);
    const { channel: ach } = await subscribed(a, name);
    await subscribed(b, name);
    const bRaw = framesNamed(b, 'client-disabled');
    const aErrors = record(a.connection, 'error');
    ach.trigger('client-disabled', { x: 1 });
    const [err] = await aErrors.next(5_000);
    assert.equal(err.type, 'PusherError', JSON.stringify(err));
    await delay(QUIET_MS);
    assert.equal(bRaw.list.length, 0, `delivered although disabled: ${JSON.stringify(bRaw.list)}`);
    assert.equal(a.connection.state, 'connected');
    bRaw.stop();
  });
});
