// The cluster test cases, written once and run against each backend (cluster-redis.test.mjs,
// cluster-nats.test.mjs, cluster-faults-*.test.mjs, cluster-topologies.test.mjs).
//
// A case is `async (ctx) => {}` with ctx = {nodes, receiver?, broker?}: nodes[0..2] are running
// ringcast nodes of one cluster. Cases use their own unique channel names, so several cases can
// share one cluster. "Exactly once" is checked after a sentinel that travels the same path later
// (same origin node, same channel), never after a quiet period alone.
//
// Nothing here sleeps to synchronize: every wait is a bounded waitFor on a condition.

import assert from 'node:assert/strict';
import { after, afterEach, before, describe, it } from 'node:test';
import { closeAllClients, closeClient, errorCode, serverSdk, uniq, waitForEvent, waitForState } from './client.mjs';
import { EventSource } from 'eventsource';
import { DEFAULT_APP } from './server.mjs';
import { natsPublish, natsSubjects, redisPubsubChannels, redisPublish, startBroker } from './broker.mjs';
import {
  apiGet,
  appConfig,
  channelInfo,
  HISTORY_APP,
  clientOn,
  collect,
  everyNode,
  join,
  nodeLogs,
  signedInOn,
  startNodes,
  startReceiver,
  stopNodes,
  userIds,
  waitFor,
  WAIT_MS,
} from './cluster.mjs';

/**
 * Cases that wait for the implementation (H2). They are not registered (so the suite is never
 * red on a checkpoint) unless RINGCAST_CLUSTER_ALL=1. Keep this in step with .cluster-notes.md.
 * key: case title; value: what it waits for.
 */
export const WAITING = new Map([]);

const RUN_ALL = process.env.RINGCAST_CLUSTER_ALL === '1';

/** Does this case run (is it not waiting for the implementation)? */
export function enabled(title) {
  return RUN_ALL || !WAITING.has(title);
}

/** Register `it(title)` unless it waits for the implementation. */
export function caseIt(title, opts, fn) {
  if (!enabled(title)) return;
  it(title, opts, fn);
}

/** REST trigger through `node` (throws on non-200). */
async function trigger(node, channel, event, data, params) {
  const res = await node.sdk.trigger(channel, event, data, params);
  assert.equal(res.status, 200);
}

/** Wait until /channels/{ch}?info=... deep-equals `expected` from every node. */
function countsEverywhere(nodes, ch, expected, info = 'subscription_count') {
  return everyNode(nodes, (nd) => channelInfo(nd, ch, info), expected, `/channels/${ch}?info=${info}`);
}

function usersEverywhere(nodes, ch, ids) {
  return everyNode(nodes, (nd) => userIds(nd, ch), [...ids].sort(), `/channels/${ch}/users`);
}

const memberId = (m) => m?.id;

/**
 * Occupy channel `ch` through node `nd` until every node of `nodes` sees it occupied, then vacate
 * it: its channel_occupied/vacated webhooks come after everything `nd` reported before.
 */
async function sentinelChannel(nodes, nd, ch) {
  const p = await clientOn(nd);
  await join(p, ch);
  await countsEverywhere(nodes, ch, { occupied: true, subscription_count: 1 });
  closeClient(p);
}

// ---------------------------------------------------------------------------------------------
// The basic matrix (one shared 3-node cluster per backend)

export const basic = {
  async 'public channel: an event published through any node reaches every subscriber on every node exactly once'({ nodes }) {
    const ch = uniq('cl-pub-');
    const subs = [];
    for (const nd of nodes) {
      for (let k = 0; k < 2; k += 1) {
        const p = await clientOn(nd);
        const { channel } = await join(p, ch);
        subs.push({ node: nd.id, ev: collect(channel, 'ev'), done: collect(channel, 'done') });
      }
    }
    await countsEverywhere(nodes, ch, { occupied: true, subscription_count: 2 * nodes.length });
    for (const [i, nd] of nodes.entries()) {
      await trigger(nd, ch, 'ev', { from: i, n: 0 });
      await trigger(nd, ch, 'ev', { from: i, n: 1 });
      await trigger(nd, ch, 'done', { from: i });
    }
    for (const s of subs) {
      await s.done.until((g) => g.length >= nodes.length, `3 sentinels at a subscriber on ${s.node}`);
      const got = s.ev.data().map((d) => `${d.from}/${d.n}`).sort();
      const want = nodes.flatMap((_, i) => [`${i}/0`, `${i}/1`]).sort();
      assert.deepEqual(got, want, `subscriber on ${s.node}`);
      assert.equal(s.done.got.length, nodes.length, `sentinels at a subscriber on ${s.node}`);
    }
  },

  async 'private channel: REST events cross nodes, and socket_id excludes that connection on its own node only'({ nodes }) {
    const ch = uniq('private-cl-');
    const subs = [];
    for (const nd of nodes) {
      const p = await clientOn(nd);
      const { channel } = await join(p, ch);
      subs.push({ p, node: nd.id, ev: collect(channel, 'ev'), done: collect(channel, 'done') });
    }
    await countsEverywhere(nodes, ch, { occupied: true, subscription_count: nodes.length });
    // Publish through n0, excluding the subscriber on n1 (its socket id names another node).
    const excluded = subs[1];
    await trigger(nodes[0], ch, 'ev', { x: 1 }, { socket_id: excluded.p.connection.socket_id });
    await trigger(nodes[0], ch, 'done', {});
    for (const s of subs) await s.done.until((g) => g.length === 1, `sentinel on ${s.node}`);
    for (const s of subs) {
      assert.deepEqual(s.ev.data(), s === excluded ? [] : [{ x: 1 }], `subscriber on ${s.node}`);
    }
  },

  async 'presence across nodes: subscription_succeeded has the cluster members; member_added/removed reach every node once'({ nodes }) {
    const ch = uniq('presence-cl-');
    const users = nodes.map((_, i) => ({ user_id: `u${i}`, user_info: { node: i } }));
    const members = [];
    const clients = [];
    for (const [i, nd] of nodes.entries()) {
      const p = await clientOn(nd, users[i]);
      const { channel, data } = await join(p, ch);
      clients.push(p);
      // The new member sees everyone who joined before it, wherever they are, and itself.
      assert.deepEqual(Object.keys(data.members).sort(), users.slice(0, i + 1).map((u) => u.user_id).sort(), `members at join of u${i}`);
      assert.equal(data.count, i + 1);
      assert.deepEqual(data.members[`u${i}`], { node: i });
      members.push({ channel, added: collect(channel, 'pusher:member_added'), removed: collect(channel, 'pusher:member_removed') });
      if (i + 1 < nodes.length) await usersEverywhere(nodes, ch, users.slice(0, i + 1).map((u) => u.user_id));
    }
    await usersEverywhere(nodes, ch, users.map((u) => u.user_id));
    // Everyone who joined before u{j} saw member_added u{j} exactly once, with its user_info.
    for (const [i, m] of members.entries()) {
      const want = users.slice(i + 1).map((u) => u.user_id);
      await m.added.until((g) => g.length >= want.length, `member_added at u${i}`);
      assert.deepEqual(m.added.data().map(memberId).sort(), want.sort(), `member_added at u${i}`);
      for (const [mm] of m.added.got) assert.deepEqual(mm.info, { node: Number(mm.id.slice(1)) });
      assert.equal(m.channel.members.count, nodes.length);
    }
    // The last one leaves: member_removed once at everyone else, /users shrinks everywhere.
    const last = nodes.length - 1;
    closeClient(clients[last]);
    await usersEverywhere(nodes, ch, users.slice(0, last).map((u) => u.user_id));
    await countsEverywhere(nodes, ch, { occupied: true, user_count: last }, 'user_count');
    for (const m of members.slice(0, last)) {
      await m.removed.until((g) => g.length >= 1, 'member_removed of the last user');
      assert.deepEqual(m.removed.data().map(memberId), [`u${last}`]);
    }
  },

  async 'one user on two nodes: member_added once on the first connection anywhere, member_removed once on the last'({ nodes }) {
    const ch = uniq('presence-twice-');
    const [n0, n1, n2] = nodes;
    const observer = await clientOn(n2, { user_id: 'obs', user_info: {} });
    const { channel } = await join(observer, ch);
    const added = collect(channel, 'pusher:member_added');
    const removed = collect(channel, 'pusher:member_removed');
    const countOf = (c, id) => c.data().filter((m) => m.id === id).length;
    // A sentinel user joining through node `nd` arrives at the observer after everything that
    // node announced before it (one node's presence changes keep their order).
    const sentinel = async (nd, id) => {
      const s = await clientOn(nd, { user_id: id, user_info: {} });
      await join(s, ch);
      await added.until((g) => g.some(([m]) => m.id === id), `member_added ${id}`);
      return s;
    };

    const u0 = await clientOn(n0, { user_id: 'dual', user_info: { v: 1 } });
    await join(u0, ch);
    await added.until((g) => g.some(([m]) => m.id === 'dual'), 'member_added dual');
    const u1 = await clientOn(n1, { user_id: 'dual', user_info: { v: 1 } });
    const second = await join(u1, ch);
    // The second connection's snapshot has the user itself and the observer on another node.
    assert.deepEqual(Object.keys(second.data.members).sort(), ['dual', 'obs']);
    await sentinel(n1, 's1');
    assert.equal(countOf(added, 'dual'), 1, 'member_added for the second connection of a present user');
    await usersEverywhere(nodes, ch, ['dual', 'obs', 's1']);
    await countsEverywhere(nodes, ch, { occupied: true, user_count: 3, subscription_count: 4 }, 'user_count,subscription_count');

    closeClient(u0);
    await sentinel(n0, 's2');
    await countsEverywhere(nodes, ch, { occupied: true, user_count: 4, subscription_count: 4 }, 'user_count,subscription_count');
    assert.equal(countOf(removed, 'dual'), 0, 'member_removed while the user is still connected on n1');
    await usersEverywhere(nodes, ch, ['dual', 'obs', 's1', 's2']);

    closeClient(u1);
    await removed.until((g) => g.some(([m]) => m.id === 'dual'), 'member_removed dual');
    await sentinel(n1, 's3');
    assert.equal(countOf(removed, 'dual'), 1);
    assert.equal(countOf(added, 'dual'), 1);
    await usersEverywhere(nodes, ch, ['obs', 's1', 's2', 's3']);
  },

  async 'client events cross nodes: relayed to the other nodes once, not echoed, presence carries user_id'({ nodes }) {
    const priv = uniq('private-ce-');
    const pres = uniq('presence-ce-');
    const cs = [];
    for (const [i, nd] of nodes.entries()) {
      const p = await clientOn(nd, { user_id: `ce${i}`, user_info: {} });
      const a = (await join(p, priv)).channel;
      const b = (await join(p, pres)).channel;
      cs.push({ p, a, b, ra: collect(a, 'client-x'), rb: collect(b, 'client-y'), done: collect(a, 'client-done') });
    }
    await countsEverywhere(nodes, priv, { occupied: true, subscription_count: nodes.length });
    await usersEverywhere(nodes, pres, nodes.map((_, i) => `ce${i}`));
    cs[0].a.trigger('client-x', { n: 1 });
    cs[0].b.trigger('client-y', { n: 2 });
    cs[0].a.trigger('client-done', {});
    for (const c of cs.slice(1)) {
      await c.done.until((g) => g.length === 1, 'client-done');
      await c.rb.until((g) => g.length === 1, 'client-y');
      assert.deepEqual(c.ra.data(), [{ n: 1 }]);
      assert.deepEqual(c.rb.data(), [{ n: 2 }]);
      assert.equal(c.rb.got[0][1]?.user_id, 'ce0', 'presence client event metadata user_id');
    }
    // The sender gets no echo: a later event from n1 reaches it, its own events never do.
    cs[1].a.trigger('client-done', {});
    await cs[0].done.until((g) => g.length === 1, 'client-done from n1 at the sender');
    assert.equal(cs[0].ra.got.length, 0);
    assert.equal(cs[0].rb.got.length, 0);
  },

  async 'signin: sendToUser and terminate_connections through one node reach the user on every node'({ nodes }) {
    const [n0, n1, n2] = nodes;
    const id = uniq('user-');
    const u0 = await signedInOn(n0, { id });
    const u1 = await signedInOn(n1, { id });
    const other = await signedInOn(n2, { id: uniq('other-') });
    const r = [u0, u1, other].map((p) => ({ note: collect(p.user, 'note'), done: collect(p.user, 'done') }));
    // The user's #server-to-user channel is known cluster-wide before we publish to it.
    await countsEverywhere(nodes, `%23server-to-user-${id}`, { occupied: true, subscription_count: 2 });
    const send = async (nd, uid, ev, data) => assert.equal((await nd.sdk.sendToUser(uid, ev, data)).status, 200);
    await send(n2, id, 'note', { text: 'hi' });
    await send(n2, id, 'done', {});
    for (const x of r.slice(0, 2)) {
      await x.done.until((g) => g.length === 1, 'done to the user');
      assert.deepEqual(x.note.data(), [{ text: 'hi' }]);
    }
    assert.equal(r[2].note.got.length, 0, 'another user got the note');

    const closes = [u0, u1].map((p) => waitForEvent(p.connection, 'error', WAIT_MS, { filter: (e) => errorCode(e) === 4009 }));
    assert.equal((await n2.sdk.terminateUserConnections(id)).status, 200);
    await Promise.all(closes);
    await waitForState(u0, 'disconnected', WAIT_MS);
    await waitForState(u1, 'disconnected', WAIT_MS);
    assert.equal(other.connection.state, 'connected');
    await countsEverywhere(nodes, `%23server-to-user-${id}`, { occupied: false }, '');
  },

  async 'counts: /channels, /channels/{name} and /users are exact and equal from every node'({ nodes }) {
    const [n0, n1, n2] = nodes;
    const prefix = uniq('cnt');
    const pub = `${prefix}-pub`;
    const only2 = `${prefix}-only2`;
    const pres = `presence-${prefix}`;
    const pubSubs = [];
    pubSubs.push(await clientOn(n0));
    pubSubs.push(await clientOn(n1));
    pubSubs.push(await clientOn(n1));
    for (const p of pubSubs) await join(p, pub);
    const lone = await clientOn(n2);
    await join(lone, only2);
    const p1a = await clientOn(n0, { user_id: 'p1', user_info: {} });
    const p1b = await clientOn(n1, { user_id: 'p1', user_info: {} });
    const p2 = await clientOn(n2, { user_id: 'p2', user_info: {} });
    for (const p of [p1a, p1b, p2]) await join(p, pres);

    // subscription_count events reach a subscriber with the cluster-wide count.
    await waitFor(() => pubSubs[0].channel(pub).subscriptionCount === 3, 'pusher:subscription_count 3 at the n0 subscriber', WAIT_MS,
      () => String(pubSubs[0].channel(pub).subscriptionCount));

    await everyNode(nodes, (nd) => apiGet(nd, '/channels', { filter_by_prefix: prefix, info: 'subscription_count' }),
      { channels: { [pub]: { subscription_count: 3 }, [only2]: { subscription_count: 1 } } }, '/channels');
    await everyNode(nodes, (nd) => apiGet(nd, '/channels', { filter_by_prefix: pres, info: 'user_count' }),
      { channels: { [pres]: { user_count: 2 } } }, '/channels presence');
    await countsEverywhere(nodes, pres, { occupied: true, user_count: 2, subscription_count: 3 }, 'user_count,subscription_count');
    await usersEverywhere(nodes, pres, ['p1', 'p2']);

    // Shrink: counts follow, vacated channels leave the lists on every node.
    closeClient(pubSubs[1]);
    closeClient(pubSubs[2]);
    closeClient(lone);
    closeClient(p1a);
    await everyNode(nodes, (nd) => apiGet(nd, '/channels', { filter_by_prefix: prefix, info: 'subscription_count' }),
      { channels: { [pub]: { subscription_count: 1 } } }, '/channels after leaving');
    await countsEverywhere(nodes, pres, { occupied: true, user_count: 2, subscription_count: 2 }, 'user_count,subscription_count');
    await countsEverywhere(nodes, only2, { occupied: false }, '');
    closeClient(pubSubs[0]);
    closeClient(p1b);
    closeClient(p2);
    await everyNode(nodes, (nd) => apiGet(nd, '/channels', { filter_by_prefix: prefix }), { channels: {} }, '/channels when empty');
    await countsEverywhere(nodes, pres, { occupied: false }, '');
    await countsEverywhere(nodes, pub, { occupied: false }, '');
  },

  async 'an SSE stream on one node gets the events published through another, in order'({ nodes }) {
    const ch = uniq('sse-');
    const streams = nodes.slice(1).map((nd) => {
      const got = [];
      const es = new EventSource(`http://127.0.0.1:${nd.port}/apps/${DEFAULT_APP.appId}/stream?channels=${ch}`);
      for (const t of ['tick', 'ringcast:subscribed']) es.addEventListener(t, (e) => got.push({ type: t, id: e.lastEventId, data: e.data }));
      return { es, got, node: nd.id };
    });
    try {
      // `ringcast:subscribed` is sent when the owner answers, which clustered waits for the
      // broker subscription of the channel's events: every later event reaches the stream.
      for (const s of streams) await waitFor(() => s.got.some((e) => e.type === 'ringcast:subscribed'), `subscribed on ${s.node}`);
      for (let i = 1; i <= 5; i += 1) await trigger(nodes[0], ch, 'tick', `n${i}\nline`);
      for (const s of streams) {
        await waitFor(() => s.got.filter((e) => e.type === 'tick').length >= 5, `5 ticks on ${s.node}`);
        const ticks = s.got.filter((e) => e.type === 'tick');
        assert.deepEqual(ticks.map((e) => e.data), [1, 2, 3, 4, 5].map((i) => `n${i}\nline`), `order on ${s.node}`);
        // Each node numbers what its owner core fans out.
        assert.deepEqual(ticks.map((e) => e.id), ['1', '2', '3', '4', '5'], `ids on ${s.node}`);
      }
    } finally {
      for (const s of streams) s.es.close();
    }
  },

  async 'per-channel order: events published through one node arrive in order on every node'({ nodes }) {
    const ch = uniq('private-order-');
    const N = 40;
    const subs = [];
    for (const nd of nodes) {
      const p = await clientOn(nd);
      const { channel } = await join(p, ch);
      subs.push({ p, channel, node: nd.id, rest: collect(channel, 'seq'), ce: collect(channel, 'client-seq') });
    }
    await countsEverywhere(nodes, ch, { occupied: true, subscription_count: nodes.length });
    // REST through n0: single triggers, then batches (each answered before the next is sent).
    for (let i = 0; i < N / 2; i += 1) await trigger(nodes[0], ch, 'seq', { i });
    for (let i = N / 2; i < N; i += 10) {
      const batch = [];
      for (let j = i; j < i + 10; j += 1) batch.push({ channel: ch, name: 'seq', data: { i: j } });
      assert.equal((await nodes[0].sdk.triggerBatch(batch)).status, 200);
    }
    // Client events from the subscriber on n0.
    for (let i = 0; i < N; i += 1) subs[0].channel.trigger('client-seq', { i });
    const want = Array.from({ length: N }, (_, i) => i);
    for (const s of subs) {
      await s.rest.until((g) => g.length >= N, `${N} REST events on ${s.node}`);
      assert.deepEqual(s.rest.data().map((d) => d.i), want, `REST order on ${s.node}`);
    }
    for (const s of subs.slice(1)) {
      await s.ce.until((g) => g.length >= N, `${N} client events on ${s.node}`);
      assert.deepEqual(s.ce.data().map((d) => d.i), want, `client event order on ${s.node}`);
    }
  },

  async 'cache channels and history answer the same from every node'({ nodes }) {
    const [n0, , n2] = nodes;
    // Cache channel: the last event published through any node is replayed by every node, even
    // with no subscriber anywhere when it was published.
    const ch = uniq('cache-cl-');
    const replayOn = async (nd, want) => waitFor(async () => {
      const p = await clientOn(nd);
      try {
        const channel = p.subscribe(ch);
        const got = await Promise.race([
          waitForEvent(channel, 'price', 10_000).then((d) => ({ d })),
          waitForEvent(channel, 'pusher:cache_miss', 10_000).then(() => ({ miss: true })),
        ]);
        return got.d && JSON.stringify(got.d) === JSON.stringify(want) ? got.d : false;
      } finally {
        closeClient(p);
      }
    }, `cache replay ${JSON.stringify(want)} on ${nd.id}`);
    await trigger(n0, ch, 'price', { usd: 1 });
    for (const nd of nodes) assert.deepEqual(await replayOn(nd, { usd: 1 }), { usd: 1 });
    await trigger(n2, ch, 'price', { usd: 2 });
    for (const nd of nodes) assert.deepEqual(await replayOn(nd, { usd: 2 }), { usd: 2 });

    // History (an app with history_size > 0): every node lists the events published through all.
    const hist = uniq('hist-cl-');
    const sdks = nodes.map((nd) => serverSdk(nd, HISTORY_APP));
    for (const [i, sdk] of sdks.entries()) assert.equal((await sdk.trigger(hist, 'story', { i })).status, 200);
    const want = nodes.map((_, i) => JSON.stringify({ i }));
    await Promise.all(sdks.map((sdk, k) => waitFor(async () => {
      const body = await (await sdk.get({ path: `/channels/${hist}/events`, params: { limit: 10 } })).json();
      const got = body.events.map((e) => (typeof e.data === 'string' ? e.data : JSON.stringify(e.data)));
      return JSON.stringify([...got].sort()) === JSON.stringify([...want].sort()) && body.events.every((e) => e.event === 'story');
    }, `history of ${hist} from ${nodes[k].id}`)));
  },

  async 'webhooks: occupied/vacated and member_added/removed fire once per cluster transition, client_event once; all valid'({ nodes, receiver }) {
    const [n0, n1, n2] = nodes;
    const prefix = uniq('wh');
    const pub = `${prefix}-pub`;
    const pres = `presence-${prefix}`;
    const priv = `private-${prefix}`;
    const cs = [];
    for (const nd of nodes) {
      const p = await clientOn(nd);
      await join(p, pub);
      cs.push(p);
    }
    const a0 = await clientOn(n0, { user_id: 'wa', user_info: {} });
    const a1 = await clientOn(n1, { user_id: 'wa', user_info: {} });
    const b2 = await clientOn(n2, { user_id: 'wb', user_info: {} });
    for (const p of [a0, a1, b2]) await join(p, pres);
    const s1 = await clientOn(n1);
    const s2 = await clientOn(n2);
    const sender = (await join(s1, priv)).channel;
    const got = collect((await join(s2, priv)).channel, 'client-hook');
    await countsEverywhere(nodes, priv, { occupied: true, subscription_count: 2 });
    sender.trigger('client-hook', { k: 1 });
    await got.until((g) => g.length === 1, 'client-hook');
    await receiver.until([
      { name: 'channel_occupied', channel: pub },
      { name: 'channel_occupied', channel: pres },
      { name: 'member_added', channel: pres, user_id: 'wa' },
      { name: 'member_added', channel: pres, user_id: 'wb' },
      { name: 'client_event', channel: priv, event: 'client-hook' },
    ]);
    for (const p of [...cs, a0, a1, b2, s1, s2]) closeClient(p);
    await receiver.until([
      { name: 'channel_vacated', channel: pub },
      { name: 'channel_vacated', channel: pres },
      { name: 'channel_vacated', channel: priv },
      { name: 'member_removed', channel: pres, user_id: 'wa' },
      { name: 'member_removed', channel: pres, user_id: 'wb' },
    ]);
    // Sentinels: a channel occupied (visibly, cluster-wide) and vacated through each node, after
    // all of the above.
    for (const [i, nd] of nodes.entries()) await sentinelChannel(nodes, nd, `${prefix}-sentinel${i}`);
    await receiver.until(nodes.map((_, i) => ({ name: 'channel_vacated', channel: `${prefix}-sentinel${i}` })));
    const once = (m) => assert.equal(receiver.count(m), 1, `${JSON.stringify(m)}: ${JSON.stringify(receiver.matching(m))}`);
    for (const channel of [pub, pres, priv]) {
      once({ name: 'channel_occupied', channel });
      once({ name: 'channel_vacated', channel });
    }
    for (const user_id of ['wa', 'wb']) {
      once({ name: 'member_added', channel: pres, user_id });
      once({ name: 'member_removed', channel: pres, user_id });
    }
    once({ name: 'client_event', channel: priv, event: 'client-hook' });
    const ce = receiver.matching({ name: 'client_event', channel: priv })[0];
    assert.equal(ce.socket_id, s1.connection.socket_id);
    assert.deepEqual(JSON.parse(ce.data), { k: 1 });
    for (const r of receiver.requests) assert.equal(r.valid, true, `invalid webhook ${r.rawBody}`);
  },
  async 'webhooks: a brief subscription on a non-leader node still gives one channel_occupied and one channel_vacated'({ nodes, receiver }) {
    const prefix = uniq('brief');
    const brief = `${prefix}-brief`;
    const last = nodes[nodes.length - 1];
    const p = await clientOn(last);
    await join(p, brief);
    closeClient(p);
    await sentinelChannel(nodes, last, `${prefix}-sentinel`);
    await receiver.until([{ name: 'channel_vacated', channel: `${prefix}-sentinel` }]);
    await receiver.until([{ name: 'channel_occupied', channel: brief }, { name: 'channel_vacated', channel: brief }]);
    assert.equal(receiver.count({ name: 'channel_occupied', channel: brief }), 1);
    assert.equal(receiver.count({ name: 'channel_vacated', channel: brief }), 1);
  },
};

/**
 * Register the basic matrix for one backend: one broker, one webhook receiver and 3 nodes shared
 * by every case (each case uses its own channels).
 */
export function registerBasic(kind, { nodeUrl, cases = Object.keys(basic), brokerOpts, label = kind } = {}) {
  // No cluster (no broker, no nodes) for a describe whose cases all wait for the implementation.
  if (!cases.some(enabled)) return;
  describe(`cluster on ${label}: 3 nodes`, { timeout: 600_000 }, () => {
    const ctx = {};
    before(async () => {
      ctx.broker = await startBroker(kind, brokerOpts);
      ctx.receiver = await startReceiver();
      ctx.nodes = await startNodes(3, {
        cluster: nodeUrl ? (i) => nodeUrl(ctx.broker, i) : ctx.broker.url,
        leaseMs: 2000,
        config: appConfig({ webhookUrl: ctx.receiver.url }),
      });
    });
    afterEach(async (t) => {
      closeAllClients();
      if (ctx.nodes && process.env.RINGCAST_CLUSTER_LOGS === '1') console.log(nodeLogs(ctx.nodes));
      void t;
    });
    after(async () => {
      closeAllClients();
      if (ctx.nodes) await stopNodes(ctx.nodes);
      if (ctx.broker) await ctx.broker.close();
      if (ctx.receiver) await ctx.receiver.close();
    });
    for (const title of cases) {
      const fn = basic[title];
      if (!fn) throw new Error(`no basic case ${title}`);
      caseIt(title, { timeout: 120_000 }, () => withLogs(ctx, () => fn(ctx)));
    }
  });
}

/** Run fn; on failure append the nodes' (and broker's) logs to the error. */
export async function withLogs(ctx, fn) {
  try {
    await fn();
  } catch (err) {
    const extra = `${ctx.nodes ? nodeLogs(ctx.nodes) : ''}\n${ctx.broker?.logs ? `--- broker ---\n${ctx.broker.logs()}` : ''}`;
    err.message = `${err.message}\n${extra}`;
    throw err;
  }
}

export { WAIT_MS };

// ---------------------------------------------------------------------------------------------
// Faults (each case gets its own broker, receiver and 3 nodes, since it breaks them)

/** Start broker + receiver + 3 nodes, run fn(ctx), always tear everything down. */
async function withCluster(kind, { leaseMs = 2000 } = {}, fn) {
  const ctx = {};
  try {
    ctx.broker = await startBroker(kind);
    ctx.receiver = await startReceiver();
    ctx.nodes = await startNodes(3, { cluster: ctx.broker.url, leaseMs, config: appConfig({ webhookUrl: ctx.receiver.url }) });
    await withLogs(ctx, () => fn(ctx));
  } finally {
    closeAllClients();
    if (ctx.nodes) await stopNodes(ctx.nodes);
    if (ctx.broker) await ctx.broker.close();
    if (ctx.receiver) await ctx.receiver.close();
  }
}

/**
 * The shared scene of the node-loss cases: an observer `obs` on n0; user `both` on n1 and n2;
 * `victim` only on the lost node; a public channel with a subscriber on n1 and on the lost node;
 * a channel only the lost node has. Returns what the checks need.
 */
async function nodeLossScene(nodes, lostIndex) {
  const lost = nodes[lostIndex];
  const survivors = nodes.filter((_, i) => i !== lostIndex);
  const prefix = uniq('loss');
  const pres = `presence-${prefix}`;
  const pub = `${prefix}-pub`;
  const onlyLost = `${prefix}-only-lost`;
  const obs = await clientOn(survivors[0], { user_id: 'obs', user_info: {} });
  const obsCh = (await join(obs, pres)).channel;
  const removed = collect(obsCh, 'pusher:member_removed');
  const added = collect(obsCh, 'pusher:member_added');
  // `both` on the other survivor is a second witness: member_removed reaches every survivor.
  const bothCh = (await join(await clientOn(survivors[1], { user_id: 'both', user_info: {} }), pres)).channel;
  const removedAtBoth = collect(bothCh, 'pusher:member_removed');
  await join(await clientOn(lost, { user_id: 'both', user_info: {} }), pres);
  await join(await clientOn(lost, { user_id: 'victim', user_info: {} }), pres);
  for (const nd of [survivors[1], lost]) await join(await clientOn(nd), pub);
  await join(await clientOn(lost), onlyLost);
  await usersEverywhere(nodes, pres, ['both', 'obs', 'victim']);
  await countsEverywhere(nodes, pub, { occupied: true, subscription_count: 2 });
  await countsEverywhere(nodes, onlyLost, { occupied: true, subscription_count: 1 });
  return { lost, survivors, prefix, pres, pub, onlyLost, removed, added, removedAtBoth };
}

/** After losing a node: presence, counts, lists and webhooks as if its clients had left. */
async function checkNodeLoss(s, receiver) {
  const { survivors, prefix, pres, pub, onlyLost, removed, added, removedAtBoth } = s;
  await removed.until((g) => g.some(([m]) => m.id === 'victim'), 'member_removed victim at the observer');
  await removedAtBoth.until((g) => g.some(([m]) => m.id === 'victim'), 'member_removed victim on the other survivor');
  await usersEverywhere(survivors, pres, ['both', 'obs']);
  await countsEverywhere(survivors, pres, { occupied: true, user_count: 2, subscription_count: 2 }, 'user_count,subscription_count');
  await countsEverywhere(survivors, pub, { occupied: true, subscription_count: 1 });
  await countsEverywhere(survivors, onlyLost, { occupied: false }, '');
  await everyNode(survivors, (nd) => apiGet(nd, '/channels', { filter_by_prefix: prefix, info: 'subscription_count' }),
    { channels: { [pub]: { subscription_count: 1 } } }, '/channels after the loss');
  await receiver.until([
    { name: 'member_removed', channel: pres, user_id: 'victim' },
    { name: 'channel_vacated', channel: onlyLost },
  ]);
  // Sentinels through each survivor, then exact counts. The sentinel user joins through the
  // node that still holds `both`, so the observer has seen whatever that node said before it.
  const sentinel = await clientOn(survivors[1], { user_id: 'sentinel', user_info: {} });
  await join(sentinel, pres);
  await added.until((g) => g.some(([m]) => m.id === 'sentinel'), 'member_added sentinel at the observer');
  for (const [i, nd] of survivors.entries()) await sentinelChannel(survivors, nd, `${prefix}-sentinel${i}`);
  await receiver.until([
    { name: 'member_added', channel: pres, user_id: 'sentinel' },
    ...survivors.map((_, i) => ({ name: 'channel_vacated', channel: `${prefix}-sentinel${i}` })),
  ]);
  assert.deepEqual(removed.data().map(memberId), ['victim'], 'member_removed at the observer');
  assert.deepEqual(removedAtBoth.data().map(memberId), ['victim'], 'member_removed on the other survivor');
  const once = (m) => assert.equal(receiver.count(m), 1, `${JSON.stringify(m)}: ${JSON.stringify(receiver.matching(m))}`);
  once({ name: 'member_removed', channel: pres, user_id: 'victim' });
  once({ name: 'channel_vacated', channel: onlyLost });
  assert.equal(receiver.count({ name: 'member_removed', channel: pres, user_id: 'both' }), 0, 'member_removed for a user still on a survivor');
  assert.equal(receiver.count({ name: 'channel_vacated', channel: pres }), 0);
  assert.equal(receiver.count({ name: 'channel_vacated', channel: pub }), 0);
  for (const r of receiver.requests) assert.equal(r.valid, true, `invalid webhook ${r.rawBody}`);
}

export const faults = {
  async 'kill -9 of a node: the survivors drop its members (member_removed, webhooks once), counts and channels within the lease'(kind) {
    await withCluster(kind, { leaseMs: 2000 }, async ({ nodes, receiver }) => {
      const s = await nodeLossScene(nodes, 2);
      await s.lost.kill();
      await checkNodeLoss(s, receiver);
    });
  },

  async 'kill -9 of the webhook leader (the oldest node): the next node takes over and the webhooks still fire once'(kind) {
    await withCluster(kind, { leaseMs: 2000 }, async ({ nodes, receiver }) => {
      const s = await nodeLossScene(nodes, 0);
      await s.lost.kill();
      await checkNodeLoss(s, receiver);
    });
  },

  // The lease is 60 s here and every wait is bounded at WAIT_MS (20 s): the survivors can only
  // pass by acting on the stopping node's goodbye, not on its lease running out.
  async 'graceful stop (SIGTERM): the survivors drop its share at once, without waiting for the lease'(kind) {
    await withCluster(kind, { leaseMs: 60_000 }, async ({ nodes, receiver }) => {
      const s = await nodeLossScene(nodes, 2);
      const exit = await s.lost.stop('SIGTERM');
      assert.equal(exit.killed, undefined, 'the node exits by itself on SIGTERM');
      await checkNodeLoss(s, receiver);
    });
  },

  async 'broker restart: REST 503 and /health degraded while it is down, local delivery goes on, then the cluster is whole again'(kind) {
    await withCluster(kind, { leaseMs: 2000 }, async ({ nodes, broker }) => {
      const [n0, n1, n2] = nodes;
      const prefix = uniq('brk');
      const pres = `presence-${prefix}`;
      const pub = `${prefix}-pub`;
      const loc = `private-${prefix}-local`;
      const obs = await clientOn(n0, { user_id: 'obs', user_info: {} });
      const obsCh = (await join(obs, pres)).channel;
      const added = collect(obsCh, 'pusher:member_added');
      const removed = collect(obsCh, 'pusher:member_removed');
      await join(await clientOn(n1, { user_id: 'x', user_info: {} }), pres);
      const z = await clientOn(n2, { user_id: 'z', user_info: {} });
      await join(z, pres);
      const subs = [];
      for (const nd of [n1, n2]) subs.push(collect((await join(await clientOn(nd), pub)).channel, 'ev'));
      const l1 = (await join(await clientOn(n0), loc)).channel;
      const l2 = collect((await join(await clientOn(n0), loc)).channel, 'client-local');
      await usersEverywhere(nodes, pres, ['obs', 'x', 'z']);
      await countsEverywhere(nodes, pub, { occupied: true, subscription_count: 2 });
      for (const nd of nodes) assert.equal((await nd.health()).body.status, 'ok', `/health of ${nd.id} before`);

      await broker.stop();
      for (const nd of nodes) {
        await waitFor(async () => (await nd.health()).body.status === 'degraded', `/health degraded on ${nd.id}`, WAIT_MS,
          () => 'not degraded');
        const h = await nd.health();
        assert.equal(h.status, 200);
        assert.equal(h.body.cluster, 'disconnected');
        await assert.rejects(nd.sdk.trigger(pub, 'ev', { lost: true }), (err) => {
          assert.equal(err.status, 503, `REST publish on ${nd.id} with the broker down: ${err.status} ${err.body}`);
          return true;
        });
      }
      // Local delivery continues (a client event between two connections of n0).
      l1.trigger('client-local', { n: 1 });
      await l2.until((g) => g.length === 1, 'a local client event while the broker is down');
      // A change while the broker is down: z leaves n2.
      closeClient(z);

      await broker.start();
      for (const nd of nodes) {
        await waitFor(async () => (await nd.health()).body.status === 'ok', `/health ok on ${nd.id} after the restart`);
      }
      await usersEverywhere(nodes, pres, ['obs', 'x']);
      await countsEverywhere(nodes, pub, { occupied: true, subscription_count: 2 });
      await removed.until((g) => g.some(([m]) => m.id === 'z'), 'member_removed z after the restart');
      // Delivery across nodes again, through every node.
      for (const [i, nd] of nodes.entries()) await trigger(nd, pub, 'ev', { i });
      for (const s of subs) {
        await s.until((g) => g.length >= nodes.length, 'events after the restart');
        assert.deepEqual(s.data().map((d) => d.i).sort(), nodes.map((_, i) => i));
      }
      // A newcomer gets the whole cluster's members; the observer sees it once.
      const late = await clientOn(n2, { user_id: 'late', user_info: {} });
      const { data } = await join(late, pres);
      assert.deepEqual(Object.keys(data.members).sort(), ['late', 'obs', 'x']);
      await added.until((g) => g.some(([m]) => m.id === 'late'), 'member_added late');
      assert.equal(removed.data().filter((m) => m.id === 'z').length, 1);
      assert.equal(removed.data().filter((m) => m.id === 'x').length, 0, 'x never left');
    });
  },

  async 'foreign and malformed broker traffic is counted and ignored: no crash, presence and delivery go on'(kind) {
    await withCluster(kind, { leaseMs: 2000 }, async ({ nodes, broker }) => {
      const [n0, n1, n2] = nodes;
      const prefix = uniq('bad');
      const pres = `presence-${prefix}`;
      const pub = `${prefix}-pub`;
      const obsCh = (await join(await clientOn(n0, { user_id: 'obs', user_info: {} }), pres)).channel;
      const added = collect(obsCh, 'pusher:member_added');
      await join(await clientOn(n1, { user_id: 'u1', user_info: {} }), pres);
      const subs = [];
      for (const nd of [n1, n2]) {
        const { channel } = await join(await clientOn(nd), pub);
        subs.push({ ev: collect(channel, 'ev'), done: collect(channel, 'done') });
      }
      await usersEverywhere(nodes, pres, ['obs', 'u1']);
      await countsEverywhere(nodes, pub, { occupied: true, subscription_count: 2 });

      // Whatever the nodes subscribe to on the broker (event and control subjects alike) gets junk.
      const targets = kind === 'redis'
        ? await redisPubsubChannels(broker.port)
        : (await natsSubjects(broker.monitorPort)).map((t) => t.replace(/\*/g, 'junk').replace(/>$/, 'junk.more'));
      assert.ok(targets.length > 0, 'the nodes subscribe to something on the broker');
      const payloads = [
        Buffer.alloc(0),
        Buffer.from('garbage'),
        Buffer.from('{"v":1,"node":"ghost","kind":"join","user":"ghost"}'),
        Buffer.from([0x00]),
        Buffer.from([0x01]),
        Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        Buffer.alloc(70_000, 0xa5),
        ...Array.from({ length: 8 }, (_, i) => Buffer.from(Array.from({ length: 1 + i * 37 }, (_, j) => (j * 131 + i * 17 + 7) & 0xff))),
      ];
      if (kind === 'redis') {
        for (const t of targets) for (const p of payloads) await redisPublish(broker.port, t, p);
      } else {
        await natsPublish(broker.port, targets.flatMap((subject) => payloads.map((payload) => ({ subject, payload }))));
      }

      for (const nd of nodes) {
        await waitFor(async () => (metricSum(await nd.metrics(), 'ringcast_cluster_bad_messages') ?? 0) > 0,
          `ringcast_cluster_bad_messages > 0 on ${nd.id}`);
        assert.ok(nd.alive(), `${nd.id} still running`);
        assert.equal((await nd.health()).body.status, 'ok');
      }
      // Nothing of the junk became a member or a count; the cluster still works.
      await usersEverywhere(nodes, pres, ['obs', 'u1']);
      await countsEverywhere(nodes, pub, { occupied: true, subscription_count: 2 });
      await trigger(n0, pub, 'ev', { n: 1 });
      await trigger(n0, pub, 'done', {});
      for (const x of subs) {
        await x.done.until((g) => g.length === 1, 'done after the junk');
        assert.deepEqual(x.ev.data(), [{ n: 1 }]);
      }
      await join(await clientOn(n2, { user_id: 'u2', user_info: {} }), pres);
      await added.until((g) => g.some(([m]) => m.id === 'u2'), 'member_added u2 after the junk');
      assert.deepEqual(added.data().map(memberId).sort(), ['u1', 'u2']);
    });
  },
};

/** Sum of a Prometheus counter/gauge (any labels; `name` or `name_total`); undefined if absent. */
export function metricSum(text, name) {
  let sum;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eE]+|NaN)/.exec(line);
    if (m && (m[1] === name || m[1] === `${name}_total`)) sum = (sum ?? 0) + Number(m[3]);
  }
  return sum;
}

/**
 * Broker sharing: two clusters with different prefixes (set in the [cluster] table of the config,
 * not on the command line) on one broker never see each other's events, presence or counts.
 */
export const sharing = {
  async 'two clusters with different prefixes share one broker and never see each other'(kind) {
    const broker = await startBroker(kind);
    const all = [];
    try {
      const A = await startNodes(2, { cluster: broker.url, toml: true, prefix: 'ringA', idPrefix: 'a' });
      all.push(...A);
      const B = await startNodes(2, { cluster: broker.url, toml: true, prefix: 'ringB', idPrefix: 'b' });
      all.push(...B);
      await withLogs({ nodes: all, broker }, async () => {
        const ch = uniq('presence-shared-');
        const side = async (nodesOf, tag) => {
          const out = [];
          for (const [i, nd] of nodesOf.entries()) {
            const { channel } = await join(await clientOn(nd, { user_id: `${tag}${i}`, user_info: {} }), ch);
            out.push({ ev: collect(channel, 'ev'), done: collect(channel, 'done') });
          }
          return out;
        };
        const a = await side(A, 'a');
        const b = await side(B, 'b');
        await usersEverywhere(A, ch, ['a0', 'a1']);
        await usersEverywhere(B, ch, ['b0', 'b1']);
        await countsEverywhere(A, ch, { occupied: true, user_count: 2, subscription_count: 2 }, 'user_count,subscription_count');
        await countsEverywhere(B, ch, { occupied: true, user_count: 2, subscription_count: 2 }, 'user_count,subscription_count');
        await trigger(B[0], ch, 'ev', { c: 'B' });
        await trigger(B[0], ch, 'done', {});
        for (const [i, x] of b.entries()) await x.done.until((g) => g.length === 1, `done in cluster B at b${i}`);
        await trigger(A[0], ch, 'ev', { c: 'A' });
        await trigger(A[0], ch, 'done', {});
        for (const [i, x] of a.entries()) await x.done.until((g) => g.length === 1, `done in cluster A at a${i}`);
        for (const x of a) assert.deepEqual(x.ev.data(), [{ c: 'A' }]);
        for (const x of b) assert.deepEqual(x.ev.data(), [{ c: 'B' }]);
        for (const x of [...a, ...b]) assert.equal(x.done.got.length, 1);
        await usersEverywhere(A, ch, ['a0', 'a1']);
        await usersEverywhere(B, ch, ['b0', 'b1']);
      });
    } finally {
      closeAllClients();
      await stopNodes(all);
      await broker.close();
    }
  },
};

/** Register the broker-sharing case for one backend. */
export function registerSharing(kind) {
  if (!Object.keys(sharing).some(enabled)) return;
  describe(`cluster on ${kind}: prefixes`, { timeout: 300_000 }, () => {
    afterEach(() => closeAllClients());
    for (const [title, fn] of Object.entries(sharing)) caseIt(title, { timeout: 120_000 }, () => fn(kind));
  });
}

/** Register the fault cases for one backend (each with its own cluster). */
export function registerFaults(kind) {
  if (!Object.keys(faults).some(enabled)) return;
  describe(`cluster on ${kind}: faults`, { timeout: 600_000 }, () => {
    afterEach(() => closeAllClients());
    for (const [title, fn] of Object.entries(faults)) {
      caseIt(title, { timeout: 150_000 }, () => fn(kind));
    }
  });
}

// ---------------------------------------------------------------------------------------------
// What waits for the implementation (kept in step with .cluster-notes.md): `WAITING.set(title,
// reason)` here keeps a case unregistered; RINGCAST_CLUSTER_ALL=1 runs it anyway. Nothing waits now.
