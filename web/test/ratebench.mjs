// `make netbench` (its rate-control half, issue 15): figures on impaired links, measured with
// headless Chromium viewers in netlab namespaces (web/test/impaired.mjs), and the daemon's CPU
// with 10 viewers against 1 on loopback. A benchmark, not a test: it prints figures and fails on
// nothing but a broken run.
//
//   node test/ratebench.mjs [SCENARIO ...] [--seconds N] [--out FILE.md] [--json FILE]
//                           [--before BIN]   (CPU: also measure another build, e.g. main's)
//
// Scenarios: loss, cap, two, cut, uplink, cpu (default: all). Binary: $SPYGLASS_BIN.

import { execFileSync, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Broker, spyglassBin } from './harness.mjs';
import {
  bottleneck, cutAndRecover, delta, deviceStats, impairedLab, inbound, openViewer, sleep, startDevice,
} from './impaired.mjs';

const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(`--${name}`);
  if (i < 0) return dflt;
  const v = argv[i + 1];
  argv.splice(i, 2);
  return v;
};
const SECONDS = Number(opt('seconds', 60));
const OUT = opt('out', null);
const JSON_OUT = opt('json', null);
const BEFORE = opt('before', null);
const wanted = argv.length ? argv : ['loss', 'cap', 'two', 'cut', 'uplink', 'cpu'];

const log = (...a) => console.error(`[ratebench ${new Date().toISOString().slice(11, 19)}]`, ...a);
const RANGE = ['--bitrate', '1500', '--max-bitrate', '2500'];
const f1 = (x) => (x == null || Number.isNaN(x) ? '—' : x.toFixed(1));
const f0 = (x) => (x == null || Number.isNaN(x) ? '—' : x.toFixed(0));
const median = (v) => (v.length ? [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)] : null);

/** Frame gaps as the page presents them (requestVideoFrameCallback): the longest, and how many
 * exceed 500 ms, since `reset`. */
async function gapWatch(page) {
  await page.evaluate(() => {
    const v = document.getElementById('video');
    const g = { max: 0, over500: 0, last: null, frames: 0 };
    window.__gaps = g;
    const cb = (now) => {
      if (window.__gaps !== g) return;
      if (g.last !== null) {
        const d = now - g.last;
        g.max = Math.max(g.max, d);
        if (d > 500) g.over500 += 1;
      }
      g.last = now;
      g.frames += 1;
      v.requestVideoFrameCallback(cb);
    };
    v.requestVideoFrameCallback(cb);
  });
}
const gaps = (page) => page.evaluate(() => ({ ...window.__gaps }));

/**
 * Watch `viewers` for `seconds`: per second, Chromium's and the device's figures. Returns per
 * viewer { rows, first, last, gaps } where first/last are Chromium's cumulative stats.
 */
async function watch(viewers, seconds, label) {
  const out = {};
  for (const v of viewers) {
    await gapWatch(v.page);
    out[v.host] = { rows: [], first: await inbound(v.page) };
  }
  const prev = Object.fromEntries(viewers.map((v) => [v.host, out[v.host].first]));
  for (let s = 1; s <= seconds; s++) {
    await sleep(1000);
    for (const v of viewers) {
      const now = await inbound(v.page);
      const dev = await deviceStats(v.page);
      const d = delta(prev[v.host], now);
      out[v.host].rows.push({ s, ...d, device: dev });
      prev[v.host] = now;
      if (s % 5 === 0) {
        log(`${label} ${v.host} t=${s}s fps=${f1(d.fps)} kbps=${f0(d.kbps)} freezes=${now.freezeCount} ` +
          `(${now.totalFreezesDuration.toFixed(2)} s) | est=${dev?.estimate_kbps} target=${dev?.target_kbps} ` +
          `layer=${dev?.layer} loss=${dev?.loss_percent}% resent=${dev?.retransmitted_packets}`);
      }
    }
  }
  for (const v of viewers) {
    out[v.host].last = prev[v.host];
    out[v.host].gaps = await gaps(v.page);
  }
  return out;
}

/** The figures of one viewer over a watch. */
function summary(w) {
  const d = delta(w.first, w.last);
  const devs = w.rows.map((r) => r.device).filter(Boolean);
  const dev0 = devs[0];
  const devN = devs.at(-1);
  return {
    seconds: d.seconds,
    fps: d.fps,
    kbps: d.kbps,
    freezes: d.freezes,
    freezeSeconds: d.freezeSeconds,
    maxGapMs: w.gaps?.max,
    gapsOver500: w.gaps?.over500,
    nacks: d.nacks,
    plis: d.plis,
    rtxReceived: w.last.retransmittedPacketsReceived - w.first.retransmittedPacketsReceived,
    keyframesPerMinute: (d.keyframes * 60) / d.seconds,
    resent: devN && dev0 ? devN.retransmitted_packets - dev0.retransmitted_packets : null,
    resentKbps: devN && dev0 ? ((devN.retransmitted_bytes - dev0.retransmitted_bytes) * 8) / 1000 / d.seconds : null,
    meanEstimate: devs.length ? devs.reduce((a, x) => a + x.estimate_kbps, 0) / devs.length : null,
    medianTarget: median(devs.slice(-30).map((x) => x.target_kbps)),
    layers: [...new Set(devs.map((x) => x.layer))],
    stalls: devN && dev0 ? devN.stalls - dev0.stalls : null,
  };
}

async function scenario(name, { viewers, device, args }, body) {
  log(`${name}: building the network`);
  const lab = impairedLab({ viewers, device });
  const daemon = startDevice(lab, { args });
  const opened = [];
  try {
    for (const host of Object.keys(viewers)) opened.push(await openViewer(lab, host, daemon));
    return await body({ lab, daemon, viewers: opened });
  } finally {
    if (process.env.NETBENCH_LOGS) writeFileSync(join(process.env.NETBENCH_LOGS, `${name}.log`), daemon.log());
    for (const v of opened) await v.browser.close();
    await daemon.close();
    lab.down();
  }
}

const BAD = { rate_kbit: 500, delay_ms: 40, loss: 0.03 };

const scenarios = {
  async loss() {
    // 2 % loss each way, 100 ms round trip, ±10 ms of jitter each way (20 ms peak to peak).
    return scenario('loss', {
      viewers: { v1: { delay_ms: 50, jitter_ms: 10, loss: 0.02 } },
      args: RANGE,
    }, async ({ viewers }) => {
      await sleep(3000);
      return summary((await watch(viewers, SECONDS, 'loss')).v1);
    });
  },
  async cap() {
    return scenario('cap', {
      viewers: { v1: { rate_kbit: 800, delay_ms: 20 } },
      args: RANGE,
    }, async ({ viewers }) => {
      const w = (await watch(viewers, SECONDS, 'cap')).v1;
      const targets = w.rows.map((r) => r.device?.target_kbps ?? null);
      // Settled: from the first second whose 5-s median of the encoder's target is at or below
      // the cap (the viewer joined at 1500 kbit/s).
      let settled = null;
      for (let i = 0; i + 5 <= targets.length; i++) {
        const m = median(targets.slice(i, i + 5).filter((x) => x != null));
        if (m != null && m <= 800) { settled = i + 1; break; }
      }
      return { ...summary(w), settledSeconds: settled };
    });
  },
  async two() {
    const alone = await scenario('two-alone', { viewers: { v1: {} }, args: RANGE }, async ({ viewers }) => {
      await sleep(3000);
      return summary((await watch(viewers, 30, 'alone')).v1);
    });
    const both = await scenario('two', { viewers: { v1: {}, v2: BAD }, args: RANGE }, async ({ viewers }) => {
      await sleep(5000);
      const w = await watch(viewers, SECONDS, 'two');
      return { clean: summary(w.v1), bad: summary(w.v2) };
    });
    return { alone, ...both };
  },
  async cut() {
    return scenario('cut', { viewers: { v1: { delay_ms: 20 } }, args: RANGE }, async ({ lab, viewers }) => {
      const runs = [];
      for (let i = 0; i < 3; i++) {
        await sleep(6000);
        const r = await cutAndRecover(lab, 'v1', viewers[0].page, 5, 20000);
        log(`cut ${i + 1}: ${JSON.stringify(r)}`);
        runs.push(r);
      }
      return runs;
    });
  },
  async uplink() {
    const device = { up: { rate_kbit: 3000 }, emulator: true };
    const alone = await scenario('uplink-alone', { device, viewers: { v1: {} }, args: RANGE }, async ({ viewers }) => {
      await sleep(3000);
      return summary((await watch(viewers, 30, 'uplink alone')).v1);
    });
    const both = await scenario('uplink', { device, viewers: { v1: {}, v2: BAD }, args: RANGE }, async ({ lab, viewers }) => {
      await sleep(5000);
      const up0 = bottleneck(lab, 'dev', 'up');
      const w = await watch(viewers, SECONDS, 'uplink');
      const up1 = bottleneck(lab, 'dev', 'up');
      return {
        clean: summary(w.v1),
        bad: summary(w.v2),
        uplinkDropped: up1.droppedPackets - up0.droppedPackets,
        uplinkSent: up1.sentPackets - up0.sentPackets,
      };
    });
    return { alone, ...both };
  },
  async cpu() {
    const out = { after: await cpuRatio(spyglassBin()) };
    if (BEFORE) out.before = await cpuRatio(BEFORE);
    return out;
  },
};

/** CPU time of a process (user + system), seconds. */
function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Daemon CPU at 640x480@30 on loopback with 1 and with 10 `spyglass view` viewers. */
async function cpuRatio(bin) {
  log(`cpu: ${bin}`);
  const broker = await Broker.start();
  const id = `bench/cpu-${Math.floor(Math.random() * 1e9)}`;
  // A build from before rate control has no --max-bitrate (its bitrate is fixed anyway).
  const help = execFileSync(bin, ['--help'], { encoding: 'utf8' });
  const range = help.includes('--max-bitrate') ? ['--max-bitrate', '1500'] : [];
  const daemon = spawn(bin, ['--id', id, '--mqtt', broker.url, '--video', 'test', '--size', '640x480',
    '--fps', '30', '--bitrate', '1500', ...range, '--audio', 'none', '--rtc-bind', '127.0.0.1',
    '--mdns', 'off', '--http', 'off', '--max-viewers', '16'], { stdio: 'ignore' });
  const viewers = [];
  const add = () => viewers.push(spawn('nice', ['-n', '10', bin, 'view', '--mqtt', broker.url, '--id', id,
    '--frames', '4000000000', '--timeout', '100000', '--rtc-bind', '127.0.0.1', '--mdns', 'off'], { stdio: 'ignore' }));
  const measure = async (window) => {
    const c0 = cpuSeconds(daemon.pid);
    const t0 = performance.now();
    await sleep(window * 1000);
    return (cpuSeconds(daemon.pid) - c0) / ((performance.now() - t0) / 1000);
  };
  try {
    await sleep(1000);
    add();
    await sleep(8000);
    const one = await measure(20);
    while (viewers.length < 10) add();
    await sleep(12000);
    const ten = await measure(20);
    log(`cpu: 1 viewer ${(one * 100).toFixed(1)} %, 10 viewers ${(ten * 100).toFixed(1)} %`);
    return { one, ten, ratio: ten / one };
  } finally {
    for (const v of viewers) v.kill('SIGTERM');
    daemon.kill('SIGTERM');
    await sleep(1500);
    await broker.close();
  }
}

const results = {};
for (const name of wanted) {
  if (!scenarios[name]) throw new Error(`unknown scenario ${name}; known: ${Object.keys(scenarios).join(', ')}`);
  results[name] = await scenarios[name]();
}
if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify(results, null, 1));

// The table.
const L = [];
const row = (what, value, target = '') => L.push(`| ${what} | ${value} | ${target} |`);
L.push(`Rate control on impaired links (${SECONDS} s per case, 640x480@30 test pattern, --bitrate 1500 --max-bitrate 2500, Chromium viewers; load average ${readFileSync('/proc/loadavg', 'utf8').split(' ')[0]})`);
L.push('');
L.push('| figure | measured | target |');
L.push('|---|---|---|');
const fz = (s) => `${s.freezes} freezes, ${f1(s.freezeSeconds)} s frozen, longest gap ${f0(s.maxGapMs)} ms`;
if (results.loss) {
  const s = results.loss;
  row('2 % loss, 100 ms RTT, 20 ms jitter: frame rate, freezes', `${f1(s.fps)} fps; ${fz(s)}; ${s.gapsOver500} gaps > 500 ms`, 'no freeze > 500 ms');
  row('… NACKs, retransmissions (sent / received as RTX), keyframes per minute',
    `${s.nacks} NACKs, ${s.resent} / ${s.rtxReceived}, ${f1(s.keyframesPerMinute)} keyframes/min`);
}
if (results.cap) {
  const s = results.cap;
  row('800 kbit/s cap, --max-bitrate 2500: encoder target settles at, after', `${f0(s.medianTarget)} kbit/s (median of the last 30 s), after ${s.settledSeconds ?? '—'} s`, 'within 5 s');
  row('… freezes over the run', fz(s));
}
if (results.two) {
  const { alone, clean, bad } = results.two;
  row('clean viewer alone: frame rate, freezes', `${f1(alone.fps)} fps; ${fz(alone)}`);
  row('clean viewer beside one at 500 kbit/s, 3 % loss (separate links)', `${f1(clean.fps)} fps (${f0((100 * clean.fps) / alone.fps)} %); ${fz(clean)}; layers ${clean.layers}`, '≥ 95 % of alone');
  row('… the lossy viewer', `${f1(bad.fps)} fps; ${fz(bad)}; layers ${bad.layers}; retransmissions ${f1(bad.resentKbps)} kbit/s of a ${f0(bad.meanEstimate)} kbit/s estimate`, 'retransmissions ≤ estimate');
}
if (results.cut) {
  row('5 s cut: link back → next decoded frame', results.cut.map((r) => `${f0(r.restoredToFrameMs)} ms${r.sessionsAfter !== r.sessionsBefore ? ' (new session!)' : ''}`).join(', '), '≤ 1000 ms, no new offer');
}
if (results.uplink) {
  const { alone, clean, bad, uplinkDropped, uplinkSent } = results.uplink;
  row('device uplink 3 Mbit/s, clean viewer alone', `${f1(alone.fps)} fps; ${fz(alone)}`);
  row('… beside one at 500 kbit/s, 3 % loss', `${f1(clean.fps)} fps (${f0((100 * clean.fps) / alone.fps)} %); ${fz(clean)}; uplink dropped ${uplinkDropped} of ${uplinkSent + uplinkDropped} packets`, '≥ 95 % of alone');
  row('… the lossy viewer', `${f1(bad.fps)} fps; ${fz(bad)}; retransmissions ${f1(bad.resentKbps)} kbit/s of a ${f0(bad.meanEstimate)} kbit/s estimate`);
}
if (results.cpu) {
  const c = results.cpu;
  const fmt = (x) => `${(x.one * 100).toFixed(1)} % → ${(x.ten * 100).toFixed(1)} %, ×${x.ratio.toFixed(2)}`;
  row('daemon CPU, 10 viewers ÷ 1, 640x480@30, loopback (`spyglass view` viewers)', `${fmt(c.after)}${c.before ? `; before (${BEFORE}): ${fmt(c.before)}` : ''}`, '≤ 1.3');
}
const table = L.join('\n');
console.log(table);
if (OUT) writeFileSync(OUT, `${table}\n`);
