// Native TLS ([tls] on the public port, [api.tls] on --api-listen) with real clients: pusher-js
// with forceTLS and the `pusher` Node SDK with useTLS, in a child process that trusts the
// test's CA through NODE_EXTRA_CA_CERTS (lib/tls-peer.mjs). The CA and the server certificates
// are made here with the openssl CLI; each certificate has its own serial, so a handshake shows
// which one the server used. Also: plain HTTP to the TLS port (closed unanswered, counted), a
// stalled handshake (closed after handshake_timeout, counted), SIGHUP certificate rotation
// (new handshakes get the new certificate, an established connection keeps receiving; a bad
// file is rejected and the old certificate stays).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { startServer } from './lib/server.mjs';
import { closeAllClients, connectedClient, subscribed, record, serverSdk, uniq } from './lib/client.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const WAIT_MS = 10_000;

function openssl(args, cwd) {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A test CA and server certificates (for 127.0.0.1) with the given serials. */
function makePki(dir, serials) {
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=Ringcast Test CA'], dir);
  writeFileSync(path.join(dir, 'ext.cnf'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' +
    'keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n');
  for (const serial of serials) {
    openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', `${serial}.key`, '-out', `${serial}.csr`, '-subj', '/CN=127.0.0.1'], dir);
    openssl(['x509', '-req', '-in', `${serial}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key',
      '-set_serial', `0x${serial}`, '-days', '2', '-extfile', 'ext.cnf', '-out', `${serial}.pem`], dir);
  }
}

/** The client process (pusher-js + pusher SDK) trusting the CA through NODE_EXTRA_CA_CERTS. */
function startPeer(caFile) {
  const child = spawn(process.execPath, [path.join(HERE, 'lib', 'tls-peer.mjs')], {
    cwd: HERE,
    stdio: ['pipe', 'pipe', 'inherit'],
    env: { ...process.env, NODE_EXTRA_CA_CERTS: caFile },
  });
  const pending = new Map();
  let seq = 0;
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    const r = JSON.parse(line);
    const p = pending.get(r.id);
    if (!p) return;
    pending.delete(r.id);
    if (r.ok) p.resolve(r.result);
    else p.reject(new Error(r.error));
  });
  return {
    call(op, args = {}) {
      const id = ++seq;
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => {
          pending.delete(id);
          reject(new Error(`peer ${op} timed out`));
        }, WAIT_MS + 5_000);
        pending.set(id, {
          resolve: (v) => (clearTimeout(t), resolve(v)),
          reject: (e) => (clearTimeout(t), reject(e)),
        });
        child.stdin.write(JSON.stringify({ id, op, ...args }) + '\n');
      });
    },
    stop() {
      child.stdin.end();
      child.kill();
    },
  };
}

/** GET over https from this process, trusting `ca` explicitly. */
function httpsGet(port, urlPath, ca) {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, path: urlPath, ca, timeout: WAIT_MS }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body, socket: res.socket }));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
  });
}

function metric(text, name, labels) {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}} `));
  assert.ok(line, `${name}{${labels}} is exported`);
  return Number(line.split(' ').pop());
}

/** Polls (bounded) until `read()` satisfies `ok`; returns the value. */
async function until(read, ok, what) {
  const end = Date.now() + WAIT_MS;
  for (;;) {
    const v = await read();
    if (ok(v)) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(v)})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Opens a TCP connection, sends `bytes`, resolves with what came back once the server closes. */
function rawExchange(port, bytes) {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port });
    const got = [];
    s.on('connect', () => s.write(bytes));
    s.on('data', (d) => got.push(d));
    s.on('close', () => (clearTimeout(t), resolve(Buffer.concat(got))));
    s.on('error', () => {});
    const t = setTimeout(() => (s.destroy(), reject(new Error('the server did not close the connection'))), WAIT_MS);
  });
}

describe('native TLS', { timeout: 120_000 }, () => {
  let dir;
  let ca;
  let server;
  let peer;
  const tlsCount = async (result) =>
    metric((await httpsGet(server.port, '/metrics', ca)).body, 'ringcast_tls_handshakes_total', `listener="public",result="${result}"`);
  const reloads = async (result) =>
    metric((await httpsGet(server.port, '/metrics', ca)).body, 'ringcast_tls_reloads_total', `listener="public",result="${result}"`);

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'ringcast-tls-'));
    makePki(dir, ['1001', '2002']);
    ca = execFileSync('cat', [path.join(dir, 'ca.pem')]);
    copyFileSync(path.join(dir, '1001.pem'), path.join(dir, 'cert.pem'));
    copyFileSync(path.join(dir, '1001.key'), path.join(dir, 'key.pem'));
    server = await startServer({
      config: `handshake_timeout_ms = 1500
[tls]
cert = ${JSON.stringify(path.join(dir, 'cert.pem'))}
key = ${JSON.stringify(path.join(dir, 'key.pem'))}
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
`,
    });
    peer = startPeer(path.join(dir, 'ca.pem'));
  });
  after(async () => {
    closeAllClients();
    if (peer) peer.stop();
    if (server) await server.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('pusher-js (forceTLS) receives what the pusher SDK (useTLS) publishes on a private channel', async () => {
    const { client, socketId } = await peer.call('connect', { port: server.port });
    assert.match(socketId, /^\d+\.\d+$/);
    const channel = uniq('private-tls-');
    await peer.call('subscribe', { client, channel, events: ['greet'] });
    const { status } = await peer.call('trigger', { port: server.port, channel, event: 'greet', data: { hello: 'tls' } });
    assert.equal(status, 200);
    const { data } = await peer.call('next', { client, channel, event: 'greet' });
    assert.deepEqual(data, { hello: 'tls' });
    const hs = await peer.call('serial', { port: server.port });
    assert.equal(hs.serial, '1001');
    assert.equal(hs.alpn, 'http/1.1');
    assert.ok(['TLSv1.3', 'TLSv1.2'].includes(hs.protocol), hs.protocol);
    assert.ok((await tlsCount('ok')) >= 3, 'handshakes are counted');
    await peer.call('close', { client });
  });

  it('plain HTTP to the TLS port is closed unanswered and counted', async () => {
    const before = await tlsCount('plaintext');
    const got = await rawExchange(server.port, 'GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
    assert.equal(got.length, 0, `answered: ${got.toString('latin1')}`);
    assert.equal(await until(() => tlsCount('plaintext'), (v) => v >= before + 1, 'plaintext count'), before + 1);
  });

  it('a stalled handshake is closed after handshake_timeout and counted', async () => {
    const before = await tlsCount('timeout');
    // The start of a TLS record header, then silence.
    const got = await rawExchange(server.port, Buffer.from([0x16, 0x03, 0x01, 0x02]));
    assert.equal(got.length, 0);
    assert.equal(await until(() => tlsCount('timeout'), (v) => v >= before + 1, 'timeout count'), before + 1);
  });

  it('a TLS record that is not a handshake is refused and counted as bad_record', async () => {
    const before = await tlsCount('bad_record');
    // An application-data record before any handshake.
    await rawExchange(server.port, Buffer.from([0x17, 0x03, 0x03, 0x00, 0x02, 0x00, 0x00]));
    assert.equal(await until(() => tlsCount('bad_record'), (v) => v >= before + 1, 'bad_record count'), before + 1);
  });

  it('SIGHUP rotates the certificate: new handshakes get it, an open connection keeps receiving', async () => {
    const { client } = await peer.call('connect', { port: server.port });
    const channel = uniq('private-rotate-');
    await peer.call('subscribe', { client, channel, events: ['tick'] });
    assert.equal((await peer.call('serial', { port: server.port })).serial, '1001');

    const ok = await reloads('ok');
    copyFileSync(path.join(dir, '2002.pem'), path.join(dir, 'cert.pem'));
    copyFileSync(path.join(dir, '2002.key'), path.join(dir, 'key.pem'));
    process.kill(server.pid, 'SIGHUP');
    await until(() => reloads('ok'), (v) => v >= ok + 1, 'the reload');
    assert.equal((await peer.call('serial', { port: server.port })).serial, '2002');

    // The connection made before the rotation still receives.
    await peer.call('trigger', { port: server.port, channel, event: 'tick', data: { n: 1 } });
    assert.deepEqual((await peer.call('next', { client, channel, event: 'tick' })).data, { n: 1 });

    // A bad certificate file is rejected; the old certificate stays.
    const rejected = await reloads('rejected');
    writeFileSync(path.join(dir, 'cert.pem'), 'not a certificate\n');
    process.kill(server.pid, 'SIGHUP');
    await until(() => reloads('rejected'), (v) => v >= rejected + 1, 'the rejection');
    assert.equal((await peer.call('serial', { port: server.port })).serial, '2002');
    assert.match(server.logs(), /certificate rejected, the old one stays/);
    await peer.call('trigger', { port: server.port, channel, event: 'tick', data: { n: 2 } });
    assert.deepEqual((await peer.call('next', { client, channel, event: 'tick' })).data, { n: 2 });

    // A certificate with a key that is not its own is rejected too.
    copyFileSync(path.join(dir, '1001.pem'), path.join(dir, 'cert.pem'));
    copyFileSync(path.join(dir, '2002.key'), path.join(dir, 'key.pem'));
    process.kill(server.pid, 'SIGHUP');
    await until(() => reloads('rejected'), (v) => v >= rejected + 2, 'the second rejection');
    assert.match(server.logs(), /KeyMismatch|not consistent/);
    assert.equal((await peer.call('serial', { port: server.port })).serial, '2002');
    await peer.call('close', { client });
  });
});

describe('[api.tls] on --api-listen', { timeout: 60_000 }, () => {
  let dir;
  let server;
  let peer;
  let apiPort;

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'ringcast-apitls-'));
    makePki(dir, ['3003']);
    server = await startServer({
      args: ['--api-listen', '127.0.0.1:0'],
      config: `[api.tls]
cert = ${JSON.stringify(path.join(dir, '3003.pem'))}
key = ${JSON.stringify(path.join(dir, '3003.key'))}
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
`,
    });
    apiPort = Number(/HTTP API on 127\.0\.0\.1:(\d+)/.exec(server.logs())[1]);
    peer = startPeer(path.join(dir, 'ca.pem'));
  });
  after(async () => {
    closeAllClients();
    if (peer) peer.stop();
    if (server) await server.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('the pusher SDK (useTLS) publishes over https to the API listener; a plaintext client receives', async () => {
    const pusher = await connectedClient(server);
    const channel = uniq('api-tls-');
    const { channel: ch } = await subscribed(pusher, channel);
    const got = record(ch, 'news');
    assert.equal((await peer.call('serial', { port: apiPort })).serial, '3003');
    const { status } = await peer.call('trigger', { port: apiPort, channel, event: 'news', data: { v: 1 } });
    assert.equal(status, 200);
    assert.deepEqual((await got.next(WAIT_MS))[0], { v: 1 });
    // Plain http to the API listener is refused (closed unanswered), and counted there.
    const raw = await rawExchange(apiPort, 'POST /apps/app-id/events HTTP/1.1\r\n\r\n');
    assert.equal(raw.length, 0);
    const ca = execFileSync('cat', [path.join(dir, 'ca.pem')]);
    const text = await until(
      async () => (await httpsGet(apiPort, '/metrics', ca)).body,
      (t) => metric(t, 'ringcast_tls_handshakes_total', 'listener="api",result="plaintext"') >= 1,
      'the api plaintext count',
    );
    assert.ok(metric(text, 'ringcast_tls_handshakes_total', 'listener="api",result="ok"') >= 2);
    // The public port stays plaintext (and, with api_listen, refuses the API).
    await assert.rejects(serverSdk(server).trigger(channel, 'news', { v: 2 }), (e) => e.status === 404);
  });
});
