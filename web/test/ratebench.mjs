// `make netbench` (its rate-control half): the figures of issue 15 on impaired links, measured with real
// Chromium viewers in netlab namespaces (web/test/impaired.mjs). A benchmark, not a test: it
// prints figures and fails on nothing but a broken run.
//
//   node test/ratebench.mjs [SCENARIO ...] [--seconds N] [--json FILE]
//
// Scenarios: loss, cap, two, cut, uplink (default: all).

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
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
const JSON_OUT = opt('json', null);
const wanted = argv.length ? argv : ['loss', 'cap', 'two', 'cut', 'uplink'];

const log = (...a) => console.error(`[netbench ${new Date().toISOString().slice(11, 19)}]`, ...a);

/** One line per second per viewer: Chromium's and the device's view. */
async function watch(viewers, seconds, { onSecond } = {}) {
  const series = Object.fromEntries(viewers.map((v) => [v.host, []]));
  let prev = Object.fromEntries(await Promise.all(viewers.map(async (v) => [v.host, await inbound(v.page)])));
  for (let s = 1; s <= seconds; s++) {
    await sleep(1000);
    if (onSecond) await onSecond(s);
    for (const v of viewers) {
      const now = await inbound(v.page);
      const dev = await deviceStats(v.page);
      if (now && prev[v.host]) {
        const d = delta(prev[v.host], now);
        const row = { s, ...d, device: dev };
        series[v.host].push(row);
        log(`${v.host} t=${s}s fps=${d.fps.toFixed(1)} kbps=${d.kbps.toFixed(0)} freezes=${now.freezeCount} ` +
          `(${now.totalFreezesDuration.toFixed(2)} s) nack=${now.nackCount} pli=${now.pliCount} rtx=${now.retransmittedPacketsReceived} ` +
          `kf=${now.keyFramesDecoded} | est=${dev?.estimate_kbps} target=${dev?.target_kbps} layer=${dev?.layer} ` +
          `loss=${dev?.loss_percent}% resent=${dev?.retransmitted_packets} held=${dev?.frames_held_back} stalls=${dev?.stalls} ` +
          `kfreq=${dev?.keyframes_requested} pacer=${dev?.pacer_ms}ms rtt=${dev?.rtt_ms}`);
      }
      prev[v.host] = now;
    }
  }
  return series;
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

const scenarios = {
  async clean() {
    return scenario('clean', { viewers: { v1: {} }, args: ['--bitrate', '1500', '--max-bitrate', '2500'] },
      async ({ viewers }) => watch(viewers, SECONDS));
  },
  async loss() {
    return scenario('loss', {
      viewers: { v1: { delay_ms: 50, jitter_ms: 10, loss: 0.02 } },
      args: ['--bitrate', '1500', '--max-bitrate', '2500'],
    }, async ({ viewers }) => watch(viewers, SECONDS));
  },
  async cap() {
    return scenario('cap', {
      viewers: { v1: { rate_kbit: 800, delay_ms: 20 } },
      args: ['--bitrate', '1500', '--max-bitrate', '2500'],
    }, async ({ lab, viewers }) => {
      const series = await watch(viewers, SECONDS);
      return { series, bottleneck: bottleneck(lab, 'v1') };
    });
  },
  async two() {
    return scenario('two', {
      viewers: { v1: {}, v2: { rate_kbit: 500, delay_ms: 40, loss: 0.03 } },
      args: ['--bitrate', '1500', '--max-bitrate', '2500'],
    }, async ({ lab, viewers }) => {
      const series = await watch(viewers, SECONDS);
      return { series, bottleneck: bottleneck(lab, 'v2') };
    });
  },
  async cut() {
    return scenario('cut', {
      viewers: { v1: { delay_ms: 20 } },
      args: ['--bitrate', '1500', '--max-bitrate', '2500'],
    }, async ({ lab, viewers }) => {
      await watch(viewers, 8);
      log('cutting v1 for 5 s');
      const recovery = await cutAndRecover(lab, 'v1', viewers[0].page, 5);
      log(`recovery: ${JSON.stringify(recovery)}`);
      const after = await watch(viewers, 10);
      return { recovery, after };
    });
  },
  async uplink() {
    return scenario('uplink', {
      device: { up: { rate_kbit: 3000 }, emulator: true },
      viewers: { v1: {}, v2: { rate_kbit: 500, delay_ms: 40, loss: 0.03 } },
      args: ['--bitrate', '1500', '--max-bitrate', '2500'],
    }, async ({ lab, viewers }) => {
      const series = await watch(viewers, SECONDS);
      return { series, uplink: bottleneck(lab, 'dev', 'up'), bad: bottleneck(lab, 'v2') };
    });
  },
};

const results = {};
for (const name of wanted) {
  if (!scenarios[name]) throw new Error(`unknown scenario ${name}; known: ${Object.keys(scenarios).join(', ')}`);
  results[name] = await scenarios[name]();
}
if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify(results, null, 1));
