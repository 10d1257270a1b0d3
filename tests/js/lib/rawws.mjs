// A minimal raw WebSocket client (RFC 6455 over node:net), used only where a test must see
// the exact wire: close codes and the first frame. pusher-js is the client under test
// everywhere else. Loopback only; every wait is bounded.

import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/**
 * Open ws://host:port{path}. Resolves once the 101 response is in.
 * Returns { messages: string[], nextMessage(ms), closed: Promise<{code, reason}>, send(text), close(code) }.
 * `closed` resolves with the server's close frame code/reason (code 1005 if the frame had none,
 * 1006 if the TCP connection ended with no close frame).
 */
export function rawConnect({ host = '127.0.0.1', port, path, timeoutMs = 5_000 }) {
  return new Promise((resolve, reject) => {
    const key = randomBytes(16).toString('base64');
    const expectAccept = createHash('sha1').update(key + GUID).digest('base64');
    const sock = net.connect({ host, port });
    let buf = Buffer.alloc(0);
    let upgraded = false;
    let fragments = [];
    let fragOpcode = 0;
    const messages = [];
    const waiters = [];
    let consumed = 0;
    let closeInfo = null;
    let resolveClosed;
    const closed = new Promise((r) => {
      resolveClosed = r;
    });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`raw ws: no upgrade response within ${timeoutMs} ms`));
    }, timeoutMs);

    const finish = (info) => {
      if (closeInfo) return;
      closeInfo = info;
      resolveClosed(info);
      for (const w of waiters.splice(0)) w.reject(new Error(`raw ws closed (${info.code}) before next message`));
    };

    function writeFrame(opcode, payload) {
      const mask = randomBytes(4);
      const len = payload.length;
      let head;
      if (len < 126) {
        head = Buffer.from([0x80 | opcode, 0x80 | len]);
      } else if (len < 65536) {
        head = Buffer.alloc(4);
        head[0] = 0x80 | opcode;
        head[1] = 0x80 | 126;
        head.writeUInt16BE(len, 2);
      } else {
        head = Buffer.alloc(10);
        head[0] = 0x80 | opcode;
        head[1] = 0x80 | 127;
        head.writeBigUInt64BE(BigInt(len), 2);
      }
      const masked = Buffer.alloc(len);
      for (let i = 0; i < len; i++) masked[i] = payload[i] ^ mask[i & 3];
      sock.write(Buffer.concat([head, mask, masked]));
    }

    function parseFrames() {
      for (;;) {
        if (buf.length < 2) return;
        const fin = (buf[0] & 0x80) !== 0;
        const opcode = buf[0] & 0x0f;
        const isMasked = (buf[1] & 0x80) !== 0;
        let len = buf[1] & 0x7f;
        let off = 2;
        if (len === 126) {
          if (buf.length < 4) return;
          len = buf.readUInt16BE(2);
          off = 4;
        } else if (len === 127) {
          if (buf.length < 10) return;
          len = Number(buf.readBigUInt64BE(2));
          off = 10;
        }
        let mask = null;
        if (isMasked) {
          if (buf.length < off + 4) return;
          mask = buf.subarray(off, off + 4);
          off += 4;
        }
        if (buf.length < off + len) return;
        let payload = Buffer.from(buf.subarray(off, off + len));
        buf = buf.subarray(off + len);
        if (mask) for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];

        if (opcode === 0x8) {
          const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
          const reason = payload.length > 2 ? payload.subarray(2).toString('utf8') : '';
          if (!closeInfo) {
            try {
              writeFrame(0x8, payload.subarray(0, 2));
            } catch {
              // socket may be gone
            }
          }
          finish({ code, reason });
          sock.end();
          return;
        } else if (opcode === 0x9) {
          writeFrame(0xa, payload);
        } else if (opcode === 0xa) {
          // pong: ignore
        } else if (opcode === 0x1 || opcode === 0x2 || opcode === 0x0) {
          if (opcode !== 0x0) {
            fragOpcode = opcode;
            fragments = [];
          }
          fragments.push(payload);
          if (fin) {
            const whole = Buffer.concat(fragments);
            fragments = [];
            const text = fragOpcode === 0x1 ? whole.toString('utf8') : whole;
            messages.push(text);
            while (waiters.length && consumed < messages.length) waiters.shift().resolve(messages[consumed++]);
          }
        }
      }
    }

    sock.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (!upgraded) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end).toString('latin1');
        buf = buf.subarray(end + 4);
        const status = /^HTTP\/1\.1 (\d{3})/.exec(head);
        const accept = /\r\nsec-websocket-accept:\s*(\S+)/i.exec(head);
        clearTimeout(timer);
        if (!status || status[1] !== '101') {
          sock.destroy();
          reject(new Error(`raw ws: upgrade refused: ${head.split('\r\n')[0]}`));
          return;
        }
        if (!accept || accept[1] !== expectAccept) {
          sock.destroy();
          reject(new Error(`raw ws: bad Sec-WebSocket-Accept in:\n${head}`));
          return;
        }
        upgraded = true;
        resolve(api);
      }
      parseFrames();
    });
    sock.on('error', (err) => {
      clearTimeout(timer);
      if (!upgraded) reject(err);
      finish({ code: 1006, reason: `socket error: ${err.message}` });
    });
    sock.on('close', () => {
      clearTimeout(timer);
      if (!upgraded) reject(new Error('raw ws: connection closed before upgrade'));
      finish({ code: 1006, reason: 'connection ended without close frame' });
    });

    const api = {
      messages,
      closed,
      nextMessage(ms = 5_000) {
        if (consumed < messages.length) return Promise.resolve(messages[consumed++]);
        if (closeInfo) return Promise.reject(new Error(`raw ws closed (${closeInfo.code})`));
        return new Promise((res, rej) => {
          const w = {
            resolve: (v) => {
              clearTimeout(t);
              res(v);
            },
            reject: (e) => {
              clearTimeout(t);
              rej(e);
            },
          };
          const t = setTimeout(() => {
            const i = waiters.indexOf(w);
            if (i >= 0) waiters.splice(i, 1);
            rej(new Error(`raw ws: no message within ${ms} ms`));
          }, ms);
          waiters.push(w);
        });
      },
      send(text) {
        writeFrame(0x1, Buffer.from(text, 'utf8'));
      },
      close(code = 1000) {
        const p = Buffer.alloc(2);
        p.writeUInt16BE(code, 0);
        try {
          writeFrame(0x8, p);
        } catch {
          // ignore
        }
        setTimeout(() => sock.destroy(), 200).unref();
      },
      destroy() {
        sock.destroy();
      },
    };

    sock.write(
      `GET ${path} HTTP/1.1\r\n` +
        `Host: ${host}:${port}\r\n` +
        'Upgrade: websocket\r\n' +
        'Connection: Upgrade\r\n' +
        `Sec-WebSocket-Key: ${key}\r\n` +
        'Sec-WebSocket-Version: 13\r\n' +
        '\r\n',
    );
  });
}

/** Wait for `closed` at most ms; rejects on timeout. */
export function closedWithin(ws, ms = 5_000) {
  let t;
  return Promise.race([
    ws.closed.finally(() => clearTimeout(t)),
    new Promise((_, rej) => {
      t = setTimeout(() => rej(new Error(`raw ws: not closed within ${ms} ms`)), ms);
    }),
  ]);
}

/** The pusher-js URL path for an app key. */
export function pusherPath(key) {
  return `/app/${encodeURIComponent(key)}?protocol=7&client=js&version=8.6.0&flash=false`;
}
