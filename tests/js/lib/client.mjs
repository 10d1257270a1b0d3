// pusher-js (the real Node build, dist/node/pusher.js) clients for the tests, plus small
// bounded waiting helpers. Channel authorization is done in-process by a `customHandler`
// that signs with the official `pusher` server SDK (authorizeChannel), exactly as an app's
// auth endpoint would.

import Pusher from 'pusher-js'; // Node build: default export is the Pusher class (with encryption)
import PusherServer from 'pusher';
import { DEFAULT_APP } from './server.mjs';

export { Pusher, PusherServer };

const DEFAULT_WAIT_MS = 5_000;

/** All clients created by createClient() that have not been closed yet. */
const clients = new Set();

/**
 * The server SDK used for signing (and, in rest.test.mjs, for REST calls).
 * @param {{port:number}} server
 */
export function serverSdk(server, { appId = DEFAULT_APP.appId, key = DEFAULT_APP.key, secret = DEFAULT_APP.secret } = {}) {
  return new PusherServer({
    appId,
    key,
    secret,
    host: '127.0.0.1',
    port: server.port,
    useTLS: false,
    timeout: 5_000,
  });
}

/**
 * A pusher-js client connected (asynchronously) to `server`.
 * @param {{port:number}} server
 * @param {object} [o]
 * @param {string} [o.key]       app key used by pusher-js in the URL
 * @param {string} [o.secret]    secret the auth handler signs with (set a wrong one to test rejection)
 * @param {string} [o.appId]
 * @param {object|function} [o.user]  presence channel_data ({user_id, user_info}) or fn(channelName) -> it
 * @param {function} [o.sign]   ({signer, socketId, channelName, presenceData}) -> auth data; replaces
 *                               the default signer.authorizeChannel(socketId, channelName, presenceData)
 * @param {object} [o.options]   extra pusher-js options (override the defaults below)
 */
export function createClient(server, o = {}) {
  const key = o.key ?? DEFAULT_APP.key;
  const signer = serverSdk(server, {
    appId: o.appId ?? DEFAULT_APP.appId,
    key,
    secret: o.secret ?? DEFAULT_APP.secret,
  });
  const authCalls = [];
  const customHandler = ({ socketId, channelName }, callback) => {
    try {
      let presenceData;
      if (channelName.startsWith('presence-')) {
        presenceData = typeof o.user === 'function' ? o.user(channelName) : o.user;
        if (!presenceData) throw new Error(`no presence user configured for ${channelName}`);
      }
      const auth = o.sign
        ? o.sign({ signer, socketId, channelName, presenceData })
        : signer.authorizeChannel(socketId, channelName, presenceData);
      authCalls.push({ socketId, channelName, auth });
      callback(null, auth);
    } catch (err) {
      callback(err, null);
    }
  };
  const pusher = new Pusher(key, {
    cluster: 'mt1',
    wsHost: '127.0.0.1',
    wsPort: server.port,
    wssPort: server.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    channelAuthorization: { customHandler },
    ...o.options,
  });
  pusher.authCalls = authCalls;
  clients.add(pusher);
  return pusher;
}

/** Disconnect one client (idempotent). */
export function closeClient(pusher) {
  if (!clients.has(pusher)) return;
  clients.delete(pusher);
  try {
    pusher.disconnect();
  } catch {
    // ignore
  }
  const i = Pusher.instances.indexOf(pusher);
  if (i >= 0) Pusher.instances.splice(i, 1);
}

/** Disconnect every client created so far (use in after/afterEach). */
export function closeAllClients() {
  for (const p of [...clients]) closeClient(p);
}

export function delay(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Resolve with the callback arguments of the next `event` emitted by `target` (a pusher-js
 * channel, a Pusher instance (global events) or pusher.connection); reject after timeoutMs.
 * Resolves with the first argument; all arguments are in `.args` of the optional `{all:true}` form.
 */
export function waitForEvent(target, event, timeoutMs = DEFAULT_WAIT_MS, { all = false, filter } = {}) {
  return new Promise((resolve, reject) => {
    const onEvent = (...args) => {
      if (filter && !filter(...args)) return;
      clearTimeout(timer);
      target.unbind(event, onEvent);
      resolve(all ? args : args[0]);
    };
    const timer = setTimeout(() => {
      target.unbind(event, onEvent);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for '${event}'${describe(target)}`));
    }, timeoutMs);
    target.bind(event, onEvent);
  });
}

function describe(target) {
  if (target && typeof target.name === 'string') return ` on channel '${target.name}'`;
  if (target && typeof target.state === 'string') return ` on connection (state=${target.state})`;
  if (target && target.connection) return ` on pusher (state=${target.connection.state})`;
  return '';
}

/** Resolve once pusher.connection.state === state (immediately if it already is). */
export function waitForState(pusher, state, timeoutMs = DEFAULT_WAIT_MS) {
  if (pusher.connection.state === state) return Promise.resolve();
  return waitForEvent(pusher.connection, 'state_change', timeoutMs, {
    filter: (s) => s.current === state,
  }).catch((err) => {
    throw new Error(`${err.message}; wanted state '${state}', is '${pusher.connection.state}'`);
  });
}

/** Resolve with the state once pusher.connection.state is one of `states`. */
export function waitForAnyState(pusher, states, timeoutMs = DEFAULT_WAIT_MS) {
  if (states.includes(pusher.connection.state)) return Promise.resolve(pusher.connection.state);
  return waitForEvent(pusher.connection, 'state_change', timeoutMs, {
    filter: (s) => states.includes(s.current),
  }).then(
    (s) => s.current,
    (err) => {
      throw new Error(`${err.message}; wanted one of ${states.join('/')}, is '${pusher.connection.state}'`);
    },
  );
}

/** createClient + wait for `connected`. */
export async function connectedClient(server, o = {}, timeoutMs = DEFAULT_WAIT_MS) {
  const pusher = createClient(server, o);
  await waitForState(pusher, 'connected', timeoutMs);
  return pusher;
}

/** Subscribe and wait for pusher:subscription_succeeded; returns {channel, data}. */
export async function subscribed(pusher, name, timeoutMs = DEFAULT_WAIT_MS) {
  const channel = pusher.subscribe(name);
  const data = await waitForEvent(channel, 'pusher:subscription_succeeded', timeoutMs);
  return { channel, data };
}

/**
 * Record every emission of `event` on `target` (until stop()). `events` holds the argument
 * arrays; `next(timeoutMs)` waits for the next one not yet consumed.
 */
export function record(target, event) {
  const events = [];
  const waiters = [];
  let consumed = 0;
  const onEvent = (...args) => {
    events.push(args);
    while (waiters.length && consumed < events.length) {
      waiters.shift().resolve(events[consumed++]);
    }
  };
  target.bind(event, onEvent);
  return {
    events,
    get count() {
      return events.length;
    },
    next(timeoutMs = DEFAULT_WAIT_MS) {
      if (consumed < events.length) return Promise.resolve(events[consumed++]);
      return new Promise((resolve, reject) => {
        const w = {
          resolve: (v) => {
            clearTimeout(t);
            resolve(v);
          },
        };
        const t = setTimeout(() => {
          const i = waiters.indexOf(w);
          if (i >= 0) waiters.splice(i, 1);
          reject(new Error(`timed out after ${timeoutMs} ms waiting for '${event}' #${consumed + 1}${describe(target)}`));
        }, timeoutMs);
        waiters.push(w);
      });
    },
    stop() {
      target.unbind(event, onEvent);
    },
  };
}

/**
 * The close/error code carried by a pusher-js connection 'error' event, whichever wrapper it
 * comes in: {type:'PusherError', data:{code}} (a pusher:error frame, or a close code on an open
 * connection) or {type:'WebSocketError', error:{type:'PusherError', data:{code}}} (a close code
 * or handshake pusher:error mapped to an action).
 */
export function errorCode(err) {
  if (!err) return undefined;
  if (err.type === 'PusherError') return err.data?.code;
  if (err.type === 'WebSocketError') return err.error?.data?.code;
  return undefined;
}

/** Unique, valid channel-name suffix per call. */
let seq = 0;
export function uniq(prefix) {
  seq += 1;
  return `${prefix}${process.pid}-${Date.now().toString(36)}-${seq}`;
}
