// Audio in real headless Chromium: spyglass with `--video test --audio tone` (a 1 kHz beep of
// 100 ms at the start of every wall-clock second, when the test pattern's flash is white), the
// page served by spyglass, a private Mosquitto; everything on 127.0.0.1.
//
// 1. The audio track plays: inbound-rtp audio packetsReceived grows and totalAudioEnergy rises.
// 2. The A/V offset, measured in the browser from the decoded media alone:
//    - video: requestVideoFrameCallback; each frame is drawn to a canvas, the flash square and the
//      code (capture time) are read. The first white frame of a second was captured
//      `captureMs mod 1000` ms after the second began, so the second "shows" at
//      expectedDisplayTime - (captureMs mod 1000).
//    - audio: an AudioWorklet on the remote track finds each beep's first loud sample after
//      silence; AudioContext.getOutputTimestamp() maps its context time to performance.now(),
//      the time it leaves for the speaker.
//    offset = audio onset - video second start, per second, paired by nearest; positive means the
//    sound comes late. The figure is printed; no bound is asserted beyond "measured".

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Broker, Spyglass, fileFixture, inboundStats, launchBrowser, sleep, until } from './harness.mjs';

const { cleanups } = fileFixture();

/** Inbound audio stats of the page's current peer connection, or null. */
async function audioStats(page) {
  const inbound = await inboundStats(page, 'audio');
  return inbound && {
    packetsReceived: inbound.packetsReceived ?? 0,
    totalAudioEnergy: inbound.totalAudioEnergy ?? 0,
    totalSamplesReceived: inbound.totalSamplesReceived ?? 0,
    audioLevel: inbound.audioLevel ?? 0,
    jitterBufferDelay: inbound.jitterBufferDelay ?? 0,
    jitterBufferEmittedCount: inbound.jitterBufferEmittedCount ?? 0,
  };
}

/** Mean jitter-buffer delay (ms) of the inbound audio and video streams: where the browser holds
 * each stream before playing it, which shows up in the A/V offset. */
async function jitterBuffers(page) {
  return page.evaluate(async () => {
    const out = {};
    (await window.spyglass.pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.jitterBufferEmittedCount) {
        out[s.kind] = {
          meanMs: (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount,
          targetMs: s.jitterBufferTargetDelay !== undefined ? (1000 * s.jitterBufferTargetDelay) / s.jitterBufferEmittedCount : null,
        };
      }
    });
    return out;
  });
}

/** Installed in the page: records flash onsets (video) and beep onsets (audio). */
function installMeasurement() {
  const v = document.getElementById('video');
  const w = v.videoWidth;
  const h = v.videoHeight;
  const B = Math.max(4, 2 * Math.floor(Math.min(Math.floor(w / 32), Math.floor(h / 30)) / 2));
  const canvas = document.createElement('canvas');
  canvas.width = w;
  canvas.height = 6 * B;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const m = { B, videoSeconds: [], audioOnsets: [], frames: 0, unread: 0, errors: [] };
  window.avMeasure = m;

  // The code's capture time, read from the top band (docs/TEST_PATTERN.md).
  function readCode(rgba, stride) {
    const bit = (r, c) => {
      const x = (c + 1) * B + B / 2 - 1;
      const y = (r + 1) * B + B / 2 - 1;
      const g = (xx, yy) => rgba[(yy * stride + xx) * 4 + 1];
      return (g(x, y) + g(x + 1, y) + g(x, y + 1) + g(x + 1, y + 1) + 2) >> 2 >= 128 ? 1 : 0;
    };
    if (![0, 1, 2, 3].every((r) => bit(r, 0) === 1 - (r & 1) && bit(r, 23) === (r & 1))) return null;
    const bytes = [];
    for (let k = 0; k < 11; k++) {
      let byte = 0;
      for (let j = 0; j < 8; j++) {
        const i = 8 * k + j;
        byte = byte * 2 + bit(Math.floor(i / 22), 1 + (i % 22));
      }
      bytes.push(byte);
    }
    let crc = 0xff;
    for (const byte of bytes.slice(0, 10)) {
      crc ^= byte;
      for (let k = 0; k < 8; k++) crc = crc & 0x80 ? ((crc << 1) ^ 0x2f) & 0xff : (crc << 1) & 0xff;
    }
    if ((crc ^ 0xff) !== bytes[10]) return null;
    return bytes.slice(4, 10).reduce((a, b) => a * 256 + b, 0);
  }

  let wasWhite = true;
  const onFrame = (now, meta) => {
    try {
      ctx.drawImage(v, 0, 0, w, 6 * B, 0, 0, w, 6 * B);
      const img = ctx.getImageData(0, 0, w, 6 * B).data;
      m.frames++;
      const captureMs = readCode(img, w);
      // Mean green over the middle half of the flash square.
      let sum = 0;
      let n = 0;
      for (let y = 2 * B; y < 4 * B; y++) {
        for (let x = w - 4 * B; x < w - 2 * B; x++) {
          sum += img[(y * w + x) * 4 + 1];
          n++;
        }
      }
      const white = sum / n >= 128;
      if (captureMs === null) {
        m.unread++;
      } else if (white && !wasWhite) {
        m.videoSeconds.push({
          second: Math.floor(captureMs / 1000),
          into: captureMs % 1000,
          shown: meta.expectedDisplayTime - (captureMs % 1000),
          displayed: meta.expectedDisplayTime,
        });
      }
      wasWhite = white;
    } catch (e) {
      m.errors.push(String(e));
    }
    v.requestVideoFrameCallback(onFrame);
  };
  v.requestVideoFrameCallback(onFrame);

  // Audio: the worklet passes the sound through (so it is "played") and reports each onset's
  // context time: the first sample above a threshold after at least 300 ms of quiet.
  const worklet = `
    class Onsets extends AudioWorkletProcessor {
      constructor() { super(); this.quiet = 0; this.peak = 0; }
      process(inputs, outputs) {
        const input = inputs[0][0];
        if (!input) return true;
        for (let c = 0; c < outputs[0].length; c++) outputs[0][c].set(inputs[0][c] || input);
        for (let i = 0; i < input.length; i++) {
          const a = Math.abs(input[i]);
          this.peak = Math.max(this.peak, a);
          if (a > 0.05) {
            if (this.quiet >= 0.3 * sampleRate) {
              this.port.postMessage({ time: (currentFrame + i) / sampleRate });
            }
            this.quiet = 0;
          } else {
            this.quiet++;
          }
        }
        return true;
      }
    }
    registerProcessor('onsets', Onsets);`;
  const track = window.spyglass.pc.getReceivers().find((r) => r.track.kind === 'audio').track;
  const ac = new AudioContext({ sampleRate: 48000 });
  m.ac = ac;
  const url = URL.createObjectURL(new Blob([worklet], { type: 'application/javascript' }));
  return ac.audioWorklet.addModule(url).then(() => {
    const node = new AudioWorkletNode(ac, 'onsets', { outputChannelCount: [1] });
    node.port.onmessage = (e) => {
      const ts = ac.getOutputTimestamp();
      // The sample at context time `time` leaves for the speaker at this performance time.
      const played = ts.performanceTime + (e.data.time - ts.contextTime) * 1000;
      m.audioOnsets.push({ context: e.data.time, played, baseLatency: ac.baseLatency, outputLatency: ac.outputLatency });
    };
    ac.createMediaStreamSource(new MediaStream([track])).connect(node);
    node.connect(ac.destination);
    return ac.resume().then(() => ac.state);
  });
}

test('with --audio tone the audio track plays in Chromium, and the A/V offset is measured', async (t) => {
  const broker = await Broker.start();
  cleanups.push(() => broker.close());
  const daemon = await Spyglass.start(broker, { size: '640x480', extra: ['--audio', 'tone'] });
  cleanups.push(() => daemon.close());
  const browser = await launchBrowser();
  cleanups.push(() => browser.close());
  const page = await browser.context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(daemon.pageUrl);

  // The list shows audio, and the page asks for it.
  const entry = page.locator(`#device-list button[data-uid="${daemon.id}"]`);
  await until('the device in the list', async () => (await entry.count()) === 1);
  assert.match(await entry.textContent(), /, audio/);
  await until('page state "live"', () => page.evaluate(() => window.spyglass.state === 'live'), 20000);

  // Unmute as a user would (the element autoplays muted).
  await until('the unmute button enabled', () => page.locator('#unmute-button').isEnabled());
  await page.locator('#unmute-button').click();
  assert.equal(await page.evaluate(() => document.getElementById('video').muted), false);

  // 1. Packets arrive and the sound has energy.
  const a = await until('inbound audio stats', () => audioStats(page));
  await sleep(2500);
  const b = await audioStats(page);
  const line1 = `Chromium audio: packetsReceived ${a.packetsReceived} -> ${b.packetsReceived}, ` +
    `totalAudioEnergy ${a.totalAudioEnergy.toFixed(4)} -> ${b.totalAudioEnergy.toFixed(4)}, ` +
    `samples ${a.totalSamplesReceived} -> ${b.totalSamplesReceived}`;
  t.diagnostic(line1);
  console.log(line1);
  assert.ok(b.packetsReceived > a.packetsReceived + 50, 'audio packets keep arriving (50/s)');
  assert.ok(b.totalAudioEnergy > a.totalAudioEnergy, 'totalAudioEnergy rises: the beeps are heard');
  assert.ok(b.totalSamplesReceived > a.totalSamplesReceived, 'samples are played out');

  // 2. A/V offset from the flash and the beep.
  const state = await page.evaluate(installMeasurement);
  assert.equal(state, 'running', 'the AudioContext runs');
  const m = await until('eleven flashes and eleven beeps', () => page.evaluate(() => {
    const m = window.avMeasure;
    return m.videoSeconds.length >= 11 && m.audioOnsets.length >= 11
      ? { videoSeconds: m.videoSeconds, audioOnsets: m.audioOnsets, frames: m.frames, unread: m.unread, errors: m.errors }
      : null;
  }), 30000);
  assert.deepEqual(m.errors, []);
  // Drop the first of each (it may be a partial second), pair every flash with the nearest beep.
  const offsets = [];
  for (const vs of m.videoSeconds.slice(1)) {
    let best = null;
    for (const ao of m.audioOnsets.slice(1)) {
      const d = ao.played - vs.shown;
      if (best === null || Math.abs(d) < Math.abs(best)) best = d;
    }
    if (best !== null && Math.abs(best) < 500) offsets.push(best);
  }
  assert.ok(offsets.length >= 3, `at least three flash/beep pairs: ${JSON.stringify(m)}`);
  const sorted = [...offsets].sort((x, y) => x - y);
  const median = sorted[Math.floor(sorted.length / 2)];
  const into = m.videoSeconds.slice(1).map((s) => s.into);
  const last = m.audioOnsets[m.audioOnsets.length - 1];
  const line2 = `Chromium A/V offset (audio later than video when positive): median ${median.toFixed(1)} ms ` +
    `over ${offsets.length} seconds [${offsets.map((o) => o.toFixed(1)).join(', ')}]; ` +
    `first white frame captured ${into.join('/')} ms into its second; ` +
    `AudioContext baseLatency ${(last.baseLatency * 1000).toFixed(1)} ms, outputLatency ${(last.outputLatency * 1000).toFixed(1)} ms; ` +
    `${m.frames} frames seen, ${m.unread} without a readable code`;
  const jb = await jitterBuffers(page);
  const fmt = (k) => (jb[k] ? `${jb[k].meanMs.toFixed(1)} ms (target ${jb[k].targetMs?.toFixed(1) ?? '?'} ms)` : 'n/a');
  const line3 = `Chromium jitter buffers, mean delay: audio ${fmt('audio')}, video ${fmt('video')}`;
  for (const line of [line2, line3]) {
    t.diagnostic(line);
    console.log(line);
  }
  assert.ok(Number.isFinite(median), 'the offset was measured');
  assert.deepEqual(errors, []);
  await page.close();
});
