// probe.js ACTION ARGS... — one egress attempt from inside a sandbox netns.
// Prints "ok <detail>" or "err <code>" and always exits 0 so the test can
// read the outcome.
const net = require('net'), dgram = require('dgram'), dns = require('dns');
const [action, a, b, c] = process.argv.slice(2);
const done = (s) => { console.log(s); process.exit(0); };
setTimeout(() => done('err TIMEOUT'), 4000);
if (action === 'tcp') {
  const s = net.connect({ host: a, port: +b });
  s.on('connect', () => { s.destroy(); done('ok connected'); });
  s.on('error', (e) => done('err ' + e.code));
} else if (action === 'udp') {
  const s = dgram.createSocket(a.includes(':') ? 'udp6' : 'udp4');
  s.on('error', (e) => done('err ' + e.code));
  s.send(Buffer.from(c || 'x'), +b, a, (e) => { setTimeout(() => done(e ? 'err ' + e.code : 'ok sent'), 300); });
} else if (action === 'dns') {
  // dns NAME SERVER: ask SERVER directly (no /etc/resolv.conf involved)
  const r = new dns.promises.Resolver({ timeout: 1000, tries: 1 });
  r.setServers([b]);
  r.resolve4(a).then((ips) => done('ok ' + ips.join(',')), (e) => done('err ' + e.code));
} else if (action === 'burst') {
  // burst HOST N: N UDP datagrams to ports 20000..20000+N-1, then exit at once
  const s = dgram.createSocket('udp4');
  let left = +b;
  s.on('error', () => {});
  for (let i = 0; i < +b; i++) {
    s.send(Buffer.from('x'), 20000 + i, a, () => { if (--left === 0) done('ok sent ' + b); });
  }
} else {
  done('err BADACTION');
}
