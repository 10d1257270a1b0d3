// Presence channels through pusher-js: membership list, `me`, member_added / member_removed
// once per *user* (not per connection). Needs: WebSocket endpoint only.

import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import {
  closeAllClients,
  closeClient,
  connectedClient,
  delay,
  record,
  subscribed,
  uniq,
  waitForEvent,
} from './lib/client.mjs';

const QUIET_MS = 1_000;

const ALICE = { user_id: 'alice-1', user_info: { name: 'Alice', n: 1 } };
const BOB = { user_id: 'bob-2', user_info: { name: 'Bob', tags: ['x', 'y'] } };

function memberIds(members) {
  const ids = [];
  members.each((m) => ids.push(m.id));
  return ids.sort();
}

/**
 * Ordering barrier between `from` and `to` on `channelName`: `from` sends a client event and we
 * wait until `to` has it. Anything the server sent to `to` because of earlier actions of `from`
 * has been delivered by then (per-connection FIFO), so "nothing arrived" checks are meaningful.
 */
async function barrier(from, to, channelName) {
  const token = Math.random().toString(36).slice(2);
  const got = waitForEvent(to.channel(channelName), 'client-barrier', 5_000, {
    filter: (d) => d && d.token === token,
  });
  assert.equal(from.channel(channelName).trigger('client-barrier', { token }), true);
  await got;
}

describe('presence channels', { timeout: 120_000 }, () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  afterEach(() => closeAllClients());
  after(async () => {
    closeAllClients();
    if (server) await server.stop();
  });

  it('subscription_succeeded: members include self, `me` is correct, count is distinct users', { timeout: 20_000 }, async () => {
    const name = uniq('presence-');
    const a = await connectedClient(server, { user: ALICE });
    const raw = record(a.connection, 'message');
    const { channel, data: members } = await subscribed(a, name);
    assert.equal(members, channel.members);
    assert.equal(members.count, 1);
    assert.deepEqual(members.me, { id: ALICE.user_id, info: ALICE.user_info });
    assert.deepEqual(memberIds(members), [ALICE.user_id]);
    assert.deepEqual(members.get(ALICE.user_id), { id: ALICE.user_id, info: ALICE.user_info });

    // Documented wire shape (pusher-js has already JSON-decoded the data string).
    const frame = raw.events.map(([m]) => m).find((m) => m.event === 'pusher_internal:subscription_succeeded');
    assert.deepEqual(frame.data, {
      presence: { ids: [ALICE.user_id], hash: { [ALICE.user_id]: ALICE.user_info }, count: 1 },
    });
    raw.stop();

    const b = await connectedClient(server, { user: BOB });
    const { data: bm } = await subscribed(b, name);
    assert.equal(bm.count, 2);
    assert.deepEqual(bm.me, { id: BOB.user_id, info: BOB.user_info });
    assert.deepEqual(memberIds(bm), [ALICE.user_id, BOB.user_id].sort());
    assert.deepEqual(bm.get(ALICE.user_id).info, ALICE.user_info);
  });

  it('member_added once per user, member_removed only when the last connection of a user leaves', { timeout: 40_000 }, async () => {
    const name = uniq('presence-');

    // Alice, first connection.
    const a1 = await connectedClient(server, { user: ALICE });
    const { channel: a1ch } = await subscribed(a1, name);
    const a1Added = record(a1ch, 'pusher:member_added');
    const a1Removed = record(a1ch, 'pusher:member_removed');

    // Bob joins: Alice sees member_added(bob) exactly once.
    const b = await connectedClient(server, { user: BOB });
    const { channel: bch, data: bMembers } = await subscribed(b, name);
    const bAdded = record(bch, 'pusher:member_added');
    const bRemoved = record(bch, 'pusher:member_removed');
    assert.equal(bMembers.count, 2);
    const [added] = await a1Added.next(5_000);
    assert.deepEqual(added, { id: BOB.user_id, info: BOB.user_info });
    assert.equal(a1ch.members.count, 2);

    // Alice, second connection: nobody gets member_added (alice is already a member).
    const a2 = await connectedClient(server, { user: ALICE });
    const { channel: a2ch, data: a2Members } = await subscribed(a2, name);
    assert.equal(a2Members.count, 2, 'count is distinct users, not connections');
    assert.deepEqual(a2Members.me, { id: ALICE.user_id, info: ALICE.user_info });
    assert.deepEqual(memberIds(a2Members), [ALICE.user_id, BOB.user_id].sort());
    const a2Added = record(a2ch, 'pusher:member_added');
    const a2Removed = record(a2ch, 'pusher:member_removed');
    await barrier(a2, b, name);
    await delay(QUIET_MS);
    assert.equal(bAdded.count, 0, `bob got member_added for a 2nd connection of alice: ${JSON.stringify(bAdded.events)}`);
    assert.equal(a1Added.count, 1, `alice#1 got extra member_added: ${JSON.stringify(a1Added.events)}`);
    assert.equal(bch.members.count, 2);

    // Alice's second connection leaves: alice still has a connection -> no member_removed anywhere.
    closeClient(a2);
    await delay(QUIET_MS);
    await barrier(a1, b, name);
    assert.equal(bRemoved.count, 0, `bob got member_removed while alice#1 is still there: ${JSON.stringify(bRemoved.events)}`);
    assert.equal(a1Removed.count, 0);
    assert.equal(bch.members.count, 2);
    assert.deepEqual(bch.members.get(ALICE.user_id), { id: ALICE.user_id, info: ALICE.user_info });

    // Alice's last connection leaves: bob gets member_removed(alice) exactly once.
    closeClient(a1);
    const [removed] = await bRemoved.next(5_000);
    assert.deepEqual(removed, { id: ALICE.user_id, info: ALICE.user_info });
    await delay(QUIET_MS);
    assert.equal(bRemoved.count, 1, `member_removed events: ${JSON.stringify(bRemoved.events)}`);
    assert.equal(bAdded.count, 0);
    assert.equal(bch.members.count, 1);
    assert.deepEqual(memberIds(bch.members), [BOB.user_id]);
    assert.equal(a2Added.count + a2Removed.count, 0);

    // A new subscriber sees only bob.
    const c = await connectedClient(server, { user: { user_id: 'carol-3', user_info: {} } });
    const { data: cMembers } = await subscribed(c, name);
    assert.equal(cMembers.count, 2);
    assert.deepEqual(memberIds(cMembers), [BOB.user_id, 'carol-3'].sort());
    const [carol] = await bAdded.next(5_000);
    assert.equal(carol.id, 'carol-3');
  });

  it('unsubscribe of the last connection sends member_removed; re-subscribe sends member_added again', { timeout: 30_000 }, async () => {
    const name = uniq('presence-');
    const a = await connectedClient(server, { user: ALICE });
    const b = await connectedClient(server, { user: BOB });
    const { channel: ach } = await subscribed(a, name);
    const added = record(ach, 'pusher:member_added');
    const removed = record(ach, 'pusher:member_removed');
    await subscribed(b, name);
    assert.equal((await added.next(5_000))[0].id, BOB.user_id);

    b.unsubscribe(name);
    assert.equal((await removed.next(5_000))[0].id, BOB.user_id);
    assert.equal(ach.members.count, 1);
    assert.equal(b.connection.state, 'connected', 'unsubscribe must not close the connection');

    await subscribed(b, name);
    assert.equal((await added.next(5_000))[0].id, BOB.user_id);
    assert.equal(ach.members.count, 2);
    await delay(QUIET_MS);
    assert.equal(added.count, 2);
    assert.equal(removed.count, 1);
  });

  it('numeric user_id (Laravel style) is accepted and reported as a string', { timeout: 20_000 }, async () => {
    const name = uniq('presence-');
    const a = await connectedClient(server, { user: { user_id: 42, user_info: { name: 'Num' } } });
    const b = await connectedClient(server, { user: BOB });
    const { channel: bch } = await subscribed(b, name);
    const added = record(bch, 'pusher:member_added');
    const { data: am } = await subscribed(a, name);
    assert.equal(am.count, 2);
    const [m] = await added.next(5_000);
    assert.equal(m.id, '42');
    assert.deepEqual(m.info, { name: 'Num' });
    assert.deepEqual(memberIds(am), ['42', BOB.user_id].sort());
  });

  it('tampered channel_data (signed for one user, sent as another) is rejected', { timeout: 20_000 }, async () => {
    const name = uniq('presence-');
    const mallory = await connectedClient(server, {
      user: ALICE,
      sign: ({ signer, socketId, channelName, presenceData }) => {
        const auth = signer.authorizeChannel(socketId, channelName, presenceData);
        return { ...auth, channel_data: JSON.stringify({ user_id: 'admin', user_info: {} }) };
      },
    });
    const b = await connectedClient(server, { user: BOB });
    const { channel: bch } = await subscribed(b, name);
    const added = record(bch, 'pusher:member_added');

    const channel = mallory.subscribe(name);
    const ok = record(channel, 'pusher:subscription_succeeded');
    const err = await waitForEvent(mallory.connection, 'error', 5_000);
    assert.equal(err.type, 'PusherError', JSON.stringify(err));
    await delay(QUIET_MS);
    assert.equal(ok.count, 0);
    assert.equal(added.count, 0, `bob saw a member join: ${JSON.stringify(added.events)}`);
    assert.equal(bch.members.count, 1);
    assert.equal(mallory.connection.state, 'connected');
  });
});
