// What the device pays for its viewers: spyglass's CPU and upload with 10 local viewers, beside
// 1 local viewer plus an SFU (Debian's Janus behind the tests' WHIP front-end, `--whip`) feeding
// 10 subscribers, and beside 1 local viewer alone. A benchmark, not a test: it prints figures and
// asserts nothing. Everything runs on 127.0.0.1.
//
//   cd web && node test/sfubench.mjs [--bin PATH] [--size WxH] [--window SECS] [--json]
//
// CPU: utime + stime of the daemon from /proc/PID/stat over the window. Upload: the bytes of the
// UDP packets the daemon sends (RTP, RTCP, STUN), counted by an nftables rule on its user id: the
// daemon runs as `nobody` (setpriv), everything else as root, and a table of this run's own
// (`inet spyglass_sfubench_<pid>`, removed at the end) counts output packets of that user. Needs
// root. Local viewers are `spyglass view` processes (nice 10); the SFU's subscribers are pages of
// one headless Chromium, which receive from Janus.

import { spawn, execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import mqtt from 'mqtt';
import { Broker, launchBrowser, sleep, spyglassBin, until } from './harness.mjs';
import { Janus } from './standards/janus.mjs';
import { WhipFrontend } from './standards/whip-frontend.mjs';
import { PageServer, subscribeJanus, watchRoom } from './standards/pages.mjs';

const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : dflt;
};
const bin = opt('--bin', spyglassBin());
const size = opt('--size', '1280x720');
const windowSecs = Number(opt('--window', 10));
const SUBSCRIBERS = 10;
const NOBODY = 65534;
const table = `spyglass_sfubench_${process.pid}`;
const CLK_TCK = 100;

function nft(args, input) {
  return execFileSync('nft', args, { input, encoding: 'utf8' });
}

function counterBytes() {
  const out = JSON.parse(nft(['-j', 'list', 'table', 'inet', table]));
  const rule = out.nftables.find((x) => x.rule);
  return rule.rule.expr.find((e) => e.counter).counter.bytes;
}

function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}

async function status(broker, id) {
  const client = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
  try {
    const got = new Promise((resolve) => client.on('message', (_t, p) => resolve(JSON.parse(p.toString()))));
    await client.subscribeAsync(`${id}/status`);
    return await got;
  } finally {
    await client.endAsync();
  }
}

/** The daemon, as `nobody`. */
function daemon(broker, id, extra = []) {
  const child = spawn('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--',
    bin, '--id', id, '--mqtt', broker.url, '--video', 'test', '--size', size, '--fps', '30',
    '--bitrate', '2000', '--max-viewers', '20', '--rtc-bind', '127.0.0.1', '--rtc-allow-loopback', 'on',
    '--mdns', 'off',
    '--http', 'off', '--audio', 'none', '--log', 'warn', ...extra], { stdio: 'ignore' });
  return child;
}

function viewers(broker, id, n) {
  return Array.from({ length: n }, () => spawn('nice', ['-n', '10', bin, 'view', '--mqtt', broker.url,
    '--id', id, '--frames', '4000000000', '--timeout', '100000', '--rtc-bind', '127.0.0.1', '--mdns', 'off'],
  { stdio: 'ignore' }));
}

async function stop(children) {
  await Promise.all(children.map((c) => new Promise((r) => {
    if (c.exitCode !== null || c.signalCode !== null) return r();
    c.once('exit', r);
    c.kill('SIGTERM');
    setTimeout(() => c.kill('SIGKILL'), 3000).unref();
  })));
}

/** CPU (share of one core) and upload (kbit/s) of the daemon over the window. */
async function measure(pid) {
  await sleep(3000);
  const c0 = cpuSeconds(pid);
  const b0 = counterBytes();
  const t0 = Date.now();
  await sleep(windowSecs * 1000);
  const secs = (Date.now() - t0) / 1000;
  return { cpu: (cpuSeconds(pid) - c0) / secs, upload_kbps: ((counterBytes() - b0) * 8) / secs / 1000 };
}

const results = {};
const cleanups = [];
if (process.getuid() !== 0) {
  console.error('sfubench: needs root (nftables counter, setpriv)');
  process.exit(2);
}
nft(['-f', '-'], `table inet ${table} {\n  chain out {\n    type filter hook output priority 0; policy accept;\n    meta skuid ${NOBODY} meta l4proto udp counter\n  }\n}\n`);
let tableUp = true;
const dropTable = () => {
  if (!tableUp) return;
  tableUp = false;
  try { nft(['delete', 'table', 'inet', table]); } catch { /* gone */ }
};
process.on('exit', dropTable);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { dropTable(); process.exit(1); });

try {
  const broker = await Broker.start();
  cleanups.push(() => broker.close());

  for (const [name, n] of [['local_1', 1], ['local_10', 10]]) {
    const id = `bench/sfu-${name}`;
    const d = daemon(broker, id);
    const v = viewers(broker, id, n);
    try {
      await until(`${n} viewers`, async () => (await status(broker, id)).viewers === n, 60000);
      results[name] = await measure(d.pid);
    } finally {
      await stop([...v, d]);
    }
    console.error(`[sfubench] ${name}: ${JSON.stringify(results[name])}`);
  }

  const janus = await Janus.start({ debugLevel: 3 });
  cleanups.push(() => janus.close());
  const whip = await WhipFrontend.start({ janus });
  cleanups.push(() => whip.close());
  const pages = await PageServer.start();
  cleanups.push(() => pages.close());
  const browser = await launchBrowser();
  cleanups.push(() => browser.close());
  const room = 'bench-sfu';
  const watcher = await watchRoom(janus, room);
  cleanups.push(() => watcher.close());
  const id = 'bench/sfu-whip';
  const d = daemon(broker, id, ['--whip', whip.endpoint(room)]);
  const v = viewers(broker, id, 1);
  try {
    const feed = await watcher.next();
    const subs = [];
    for (let i = 0; i < SUBSCRIBERS; i++) subs.push(await subscribeJanus(browser.context, pages, janus, room, feed));
    cleanups.push(async () => { for (const s of subs) await s.close(); });
    await until('subscribers decode', async () => {
      const st = await Promise.all(subs.map((s) => s.stats()));
      return st.every((s) => s.framesDecoded > 10);
    }, 60000);
    await until('1 local viewer and the publication live', async () => {
      const s = await status(broker, id);
      return s.viewers === 1 && s.whip?.state === 'live';
    }, 60000);
    const before = await Promise.all(subs.map((s) => s.stats()));
    results.sfu_1_plus_10 = await measure(d.pid);
    const after = await Promise.all(subs.map((s) => s.stats()));
    results.sfu_1_plus_10.subscriber_fps = after.map((s, i) => Math.round((s.framesDecoded - before[i].framesDecoded) / (windowSecs + 3)));
  } finally {
    await stop([...v, d]);
  }
  console.error(`[sfubench] sfu: ${JSON.stringify(results.sfu_1_plus_10)}`);
} finally {
  for (const fn of cleanups.reverse()) await fn().catch(() => {});
  dropTable();
}

const pct = (x) => `${(x * 100).toFixed(1)} %`;
const kb = (x) => `${Math.round(x)} kbit/s`;
const r = results;
const load = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
if (argv.includes('--json')) {
  console.log(JSON.stringify({ size, window_s: windowSecs, load, ...r }));
} else {
  console.log(`spyglass ${size}, 30 fps, 2 Mbit/s, test pattern; window ${windowSecs} s; load ${load}`);
  console.log('| device serves | daemon CPU (one core) | daemon upload (UDP) |');
  console.log('|---|---|---|');
  console.log(`| 1 local viewer | ${pct(r.local_1.cpu)} | ${kb(r.local_1.upload_kbps)} |`);
  console.log(`| 10 local viewers | ${pct(r.local_10.cpu)} | ${kb(r.local_10.upload_kbps)} |`);
  console.log(`| 1 local viewer + SFU (Janus) feeding ${SUBSCRIBERS} subscribers | ${pct(r.sfu_1_plus_10.cpu)} | ${kb(r.sfu_1_plus_10.upload_kbps)} |`);
  console.log(`subscribers' decoded frames/s: ${r.sfu_1_plus_10.subscriber_fps.join(', ')}`);
}
