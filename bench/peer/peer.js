#!/usr/bin/env node
// peer.js - the same work as easypost-syncd's webhook path, written the usual
// Node.js way, so bench/run.sh can price our daemon against it: read the body,
// verify X-Hmac-Signature, JSON.parse, one transaction per request through a
// node-postgres Pool, and answer only after the commit.
//
//   DATABASE_URL='host=/tmp/pg port=5432 dbname=easypost_sync user=postgres' \
//   EASYPOST_WEBHOOK_SECRET=... node peer.js --listen 127.0.0.1:8081 --mode raw --pool 32
//
// --mode raw:  one statement: the event id into webhook_event_ids (ON CONFLICT DO
//              NOTHING; the dedup key of the partitioned schema), and the row
//              into webhook_events when the id was new
// --mode full: the daemon's own ingest function, eps_ingest_batch(), for one event
//              (sql/functions/20_ingest.sql; p_created_at is text[] there)
'use strict';

const crypto = require('node:crypto');
const http = require('node:http');
const { isUtf8 } = require('node:buffer');
const { Pool } = require('pg');

// The statements, one per mode. Named, so each pool connection parses its
// statement once and then only binds and executes it (as the daemon does).
const SQL = {
  raw: {
    name: 'peer_ingest_raw',
    text:
      'WITH id AS (INSERT INTO webhook_event_ids (event_id) VALUES ($1) ' +
      'ON CONFLICT (event_id) DO NOTHING RETURNING event_id) ' +
      'INSERT INTO webhook_events (id, event_id, description, mode, object_id, raw, source, status) ' +
      "SELECT gen_random_uuid(), event_id, $2, $3, $4, $5, 'webhook', 'stored' FROM id RETURNING 1",
    params: (ev) => [ev.id, ev.description, ev.mode, ev.objectId, ev.raw],
    // a row back means stored; none means the event id was already there
    status: (res) => (res.rowCount > 0 ? 'stored' : 'duplicate'),
  },
  full: {
    name: 'peer_ingest_full',
    text:
      'SELECT status FROM eps_ingest_batch(ARRAY[gen_random_uuid()], ARRAY[$1::text], ' +
      'ARRAY[$2::text], ARRAY[$3::text], ARRAY[$4::text], ARRAY[$5::text], ARRAY[\'webhook\'], ' +
      'ARRAY[$6::text], NULL::text[], NULL::text[], NULL::text[], false)',
    params: (ev) => [ev.id, ev.description, ev.mode, ev.objectId, ev.raw, ev.createdAt],
    status: (res) => {
      if (res.rows.length !== 1) throw new Error(`eps_ingest_batch returned ${res.rows.length} rows`);
      return res.rows[0].status === 'duplicate' ? 'duplicate' : 'stored';
    },
  },
};

const WEBHOOK_PATH = '/webhooks/easypost';
const SIG_PREFIX = 'hmac-sha256-hex=';
const MAX_BODY = 1048576; // the daemon's max_body_bytes default

function usage(msg) {
  if (msg) process.stderr.write(`peer.js: ${msg}\n`);
  process.stderr.write(
    'usage: node peer.js [--listen 127.0.0.1:PORT] [--mode raw|full] [--pool N]\n' +
      '  env DATABASE_URL (libpq key=value conninfo or postgres:// URL), EASYPOST_WEBHOOK_SECRET\n'
  );
  process.exit(2);
}

function parseArgs(argv) {
  const o = { host: '127.0.0.1', port: 8081, mode: 'raw', pool: 32 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => (i + 1 < argv.length ? argv[++i] : usage(`${a} needs a value`));
    if (a === '--listen') {
      const m = /^(.*):(\d+)$/.exec(val());
      if (!m) usage('--listen wants HOST:PORT');
      o.host = m[1];
      o.port = Number(m[2]);
    } else if (a === '--mode') {
      o.mode = val();
      if (!SQL[o.mode]) usage('--mode is raw or full');
    } else if (a === '--pool') {
      o.pool = Number(val());
      if (!Number.isInteger(o.pool) || o.pool < 1 || o.pool > 1000) usage('--pool wants 1..1000');
    } else if (a === '-h' || a === '--help') {
      usage();
    } else {
      usage(`unknown argument ${a}`);
    }
  }
  return o;
}

// libpq's key=value conninfo (values may be 'quoted' with \ escapes) into a
// node-postgres config; a postgres:// URL is passed through as it is.
// host may be a socket directory, which node-postgres understands too.
function pgConfig(conninfo) {
  if (/^postgres(ql)?:\/\//.test(conninfo)) return { connectionString: conninfo };
  const keys = { host: 'host', port: 'port', dbname: 'database', user: 'user', password: 'password' };
  const cfg = {};
  const re = /\s*([A-Za-z_]+)\s*=\s*(?:'((?:[^'\\]|\\.)*)'|(\S*))/y;
  let m;
  let end = 0;
  while ((m = re.exec(conninfo)) !== null) {
    end = re.lastIndex;
    const v = m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : m[3];
    if (keys[m[1]]) cfg[keys[m[1]]] = m[1] === 'port' ? Number(v) : v;
    else if (m[1] === 'application_name') cfg.application_name = v;
    else process.stderr.write(`peer.js: DATABASE_URL: ignoring ${m[1]}\n`);
  }
  if (conninfo.slice(end).trim() !== '') usage('DATABASE_URL: cannot parse it as key=value');
  return cfg;
}

function reply(res, code, obj, headers) {
  const body = JSON.stringify(obj);
  res.writeHead(code, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(body),
    ...headers,
  });
  res.end(body);
}

// The header as a whole against the expected string, in constant time; the
// key is the secret's UTF-8 after NFKD, as in EasyPost's client libraries.
function signatureOk(key, header, body) {
  if (typeof header !== 'string' || !header.startsWith(SIG_PREFIX)) return false;
  const want = Buffer.from(SIG_PREFIX + crypto.createHmac('sha256', key).update(body).digest('hex'));
  const got = Buffer.from(header);
  return got.length === want.length && crypto.timingSafeEqual(got, want);
}

// What the insert needs from the event, or null when it is not an event.
function eventFields(body) {
  if (!isUtf8(body)) return null;
  const raw = body.toString('utf8');
  let ev;
  try {
    ev = JSON.parse(raw);
  } catch {
    return null;
  }
  if (ev === null || typeof ev !== 'object' || Array.isArray(ev)) return null;
  if (typeof ev.id !== 'string' || ev.id === '' || typeof ev.description !== 'string') return null;
  const str = (v) => (typeof v === 'string' ? v : null);
  const result = ev.result && typeof ev.result === 'object' ? ev.result : {};
  return {
    id: ev.id,
    description: ev.description,
    mode: str(ev.mode),
    objectId: str(result.id),
    raw,
    createdAt: str(ev.created_at), // as the daemon does: the function parses it
  };
}

function main() {
  const o = parseArgs(process.argv.slice(2));
  const secret = process.env.EASYPOST_WEBHOOK_SECRET;
  const conninfo = process.env.DATABASE_URL;
  if (!secret) usage('EASYPOST_WEBHOOK_SECRET is not set');
  if (!conninfo) usage('DATABASE_URL is not set');
  const key = Buffer.from(secret.normalize('NFKD'), 'utf8');
  const stmt = SQL[o.mode];
  const pool = new Pool({ ...pgConfig(conninfo), max: o.pool });
  pool.on('error', (err) => process.stderr.write(`peer.js: idle connection: ${err.message}\n`));
  let dbErrors = 0;

  async function ingest(res, body) {
    const ev = eventFields(body);
    if (ev === null) return reply(res, 400, { error: 'not a JSON EasyPost event' });
    let status;
    try {
      // a single statement outside BEGIN is its own transaction: it has
      // committed when the promise resolves
      const r = await pool.query({ name: stmt.name, text: stmt.text, values: stmt.params(ev) });
      status = stmt.status(r);
    } catch (err) {
      if (dbErrors++ < 10) process.stderr.write(`peer.js: 503 event ${ev.id}: ${err.message}\n`);
      return reply(res, 503, { error: 'database unavailable, retry' }, { 'Retry-After': '1' });
    }
    return reply(res, 200, { id: ev.id, status });
  }

  const server = http.createServer((req, res) => {
    const path = req.url.split('?', 1)[0];
    if (path === '/readyz' || path === '/healthz') {
      req.resume();
      return reply(res, 200, { status: 'ok' });
    }
    if (path !== WEBHOOK_PATH) {
      req.resume();
      return reply(res, 404, { error: 'not found' });
    }
    if (req.method !== 'POST') {
      req.resume();
      return reply(res, 405, { error: 'method not allowed: POST only' }, { Allow: 'POST' });
    }
    if (!/^\s*application\/json\s*(;|$)/i.test(req.headers['content-type'] || '')) {
      req.resume();
      return reply(res, 415, { error: 'content type must be application/json' });
    }
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        reply(res, 413, { error: 'body too large' }, { Connection: 'close' });
        req.destroy();
      } else {
        chunks.push(c);
      }
    });
    req.on('end', () => {
      if (size > MAX_BODY) return;
      const body = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size);
      if (!signatureOk(key, req.headers['x-hmac-signature'], body))
        return reply(res, 401, { error: 'signature mismatch' });
      ingest(res, body).catch((err) => {
        process.stderr.write(`peer.js: ${err.stack}\n`);
        if (!res.headersSent) reply(res, 500, { error: 'internal error' });
      });
    });
  });
  // loadgen keeps its connections open between requests, as EasyPost does
  server.keepAliveTimeout = 65000;
  server.headersTimeout = 66000;
  server.listen(o.port, o.host, () =>
    process.stderr.write(`peer.js: listening on ${o.host}:${o.port}, mode ${o.mode}, pool ${o.pool}\n`)
  );

  let stopping = false;
  const stop = (sig) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`peer.js: ${sig}: draining\n`);
    server.close(() => pool.end().then(() => process.exit(0)));
    server.closeIdleConnections();
    setTimeout(() => process.exit(1), 10000).unref();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main();
