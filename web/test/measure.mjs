// Offer -> first frame and glass-to-glass latency as Chromium sees them: a private Mosquitto and
// spyglass (test pattern) on 127.0.0.1, N page loads one after another in one headless Chromium.
// With --whep, then N WHEP sessions of the `whip-whep` package's client against the same daemon
// (POST -> first frame shown), for the two side by side.
// Usage (from web/): node test/measure.mjs [N] [WxH] [--whep]   (binary: $SPYGLASS_BIN or cargo's)
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Broker, Spyglass, launchBrowser, sleep, until } from './harness.mjs';
import { PageServer } from './standards/pages.mjs';
import { watchWhep } from './standards/whep-viewer.mjs';

const positional = process.argv.slice(2).filter((a) => !a.startsWith('--'));
const whep = process.argv.includes('--whep');
const n = Number(positional[0] ?? 20);
const size = positional[1] ?? '1280x720';
const token = 'measure-token-0123456789abcdef';
const dir = mkdtempSync(join(tmpdir(), 'spyglass-measure-'));
writeFileSync(join(dir, 'token'), token, { mode: 0o600 });
const broker = await Broker.start();
const daemon = await Spyglass.start(broker, { size, extra: whep ? ['--whep-token-file', join(dir, 'token')] : [] });
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
  if (whep) {
    const pages = await PageServer.start();
    const whepFirst = [];
    try {
      for (let i = 0; i < n; i++) {
        const v = await watchWhep(browser.context, pages, { url: `${daemon.pageUrl}whep`, token, timeoutMs: 30000 });
        if (v.ok) whepFirst.push(v.firstFrameMs);
        else console.log(`WHEP session ${i}: ${v.error}`);
        await v.stop();
        await sleep(300);
      }
    } finally {
      await pages.close();
    }
    console.log(`WHEP POST -> first frame median ${q(whepFirst, 0.5)} ms, p95 ${q(whepFirst, 0.95)} ms (${whepFirst.length} sessions: ${whepFirst.join(' ')})`);
    console.log(`MQTT offer -> first frame, each: ${first.join(' ')}`);
  }
} finally {
  await browser.close();
  await daemon.close();
  await broker.close();
  rmSync(dir, { recursive: true, force: true });
}
