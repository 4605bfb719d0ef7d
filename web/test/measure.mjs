// Offer -> first frame and glass-to-glass latency as Chromium sees them: a private Mosquitto and
// spyglass (test pattern) on 127.0.0.1, N page loads one after another in one headless Chromium.
// Usage (from web/): node test/measure.mjs [N] [WxH]     (binary: $SPYGLASS_BIN or cargo's)
import { Broker, Spyglass, launchBrowser, sleep, until } from './harness.mjs';

const n = Number(process.argv[2] ?? 20);
const size = process.argv[3] ?? '1280x720';
const broker = await Broker.start();
const daemon = await Spyglass.start(broker, { size });
const browser = await launchBrowser();
const first = [];
const latency = [];
const stages = {};
const q = (v, p) => [...v].sort((a, b) => a - b)[Math.round((v.length - 1) * p)];
try {
  for (let i = 0; i < n; i++) {
    const page = await browser.context.newPage();
    await page.goto(`${daemon.pageUrl}?stats=1`);
    await until('live', () => page.evaluate(() => window.spyglass.state === 'live'), 30000);
    const m = await until('30 latency readings', () =>
      page.evaluate(() => (window.spyglass.metrics.latencyMs.length >= 30 ? window.spyglass.metrics : null)));
    first.push(m.firstFrameMs[0]);
    for (const [stage, ms] of Object.entries(m.stages[0] ?? {})) (stages[stage] ??= []).push(ms);
    latency.push(q(m.latencyMs, 0.5));
    await page.close();
    await sleep(300);
  }
  console.log(`Chromium, ${size}, ${n} sessions:`);
  console.log(`offer -> first frame     median ${q(first, 0.5)} ms, p95 ${q(first, 0.95)} ms`);
  for (const stage of ['answer', 'ice', 'dtls', 'connected', 'frame']) {
    const v = stages[stage] ?? [];
    if (v.length) console.log(`offer -> ${stage.padEnd(18)} median ${q(v, 0.5)} ms, p95 ${q(v, 0.95)} ms`);
  }
  console.log(`glass-to-glass latency   median ${q(latency, 0.5)} ms, p95 ${q(latency, 0.95)} ms (per-session medians)`);
} finally {
  await browser.close();
  await daemon.close();
  await broker.close();
}
