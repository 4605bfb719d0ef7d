// Rate control on impaired links (issue 15), end to end: the daemon with the test pattern in the
// device's namespace of a netlab network, headless Chromium playing the viewer page in viewer
// namespaces behind shaped links (kernel rate limits, the link emulator's delay, loss and cuts).
// Behaviour only, never a time: retransmissions stay bounded, the bitrate comes down under a
// cap, a clean viewer keeps the whole stream beside a bad one on a shared uplink, the picture
// returns after a cut without a new offer. (The figures are `make netbench`'s.)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  bottleneck, cutAndRecover, delta, deviceStats, impairedLab, inbound, openViewer, sleep,
  startDevice, until,
} from './impaired.mjs';

/** Build the network, start the device, open the viewers; `body` gets them; all torn down. A
 * network whose self-check finds the asked links not delivered (the machine too busy for the
 * link emulator) makes the test say "not valid" and skip: it neither passes nor fails. */
async function withLab(t, { viewers, device, args }, body) {
  let lab;
  try {
    lab = impairedLab({ viewers, device });
  } catch (e) {
    const message = String(e?.message ?? e);
    if (message.includes('not valid')) {
      t.diagnostic(message);
      t.skip(message);
      return;
    }
    throw e;
  }
  const daemon = startDevice(lab, { args });
  const opened = [];
  try {
    for (const host of Object.keys(viewers)) opened.push(await openViewer(lab, host, daemon));
    await body({ lab, daemon, viewers: opened });
  } catch (e) {
    t.diagnostic(`device log (end):\n${daemon.log().slice(-3000)}`);
    throw e;
  } finally {
    for (const v of opened) await v.browser.close();
    await daemon.close();
    lab.down();
  }
}

/** Per-second samples of Chromium's and the device's figures for `viewer`, for `seconds`. */
async function watch(viewer, seconds) {
  const rows = [];
  let prev = await inbound(viewer.page);
  for (let s = 0; s < seconds; s++) {
    await sleep(1000);
    const now = await inbound(viewer.page);
    rows.push({ ...delta(prev, now), total: now, device: await deviceStats(viewer.page) });
    prev = now;
  }
  return rows;
}

const RANGE = ['--bitrate', '1500', '--max-bitrate', '2500'];

test('a lossy 500 kbit/s viewer: retransmissions stay within their share of the estimate', async (t) => {
  await withLab(t, {
    viewers: { v1: { rate_kbit: 500, delay_ms: 40, loss: 0.03 } },
    args: RANGE,
  }, async ({ lab, viewers: [v] }) => {
    await sleep(5000);
    const first = await until('device stats', () => deviceStats(v.page));
    const startTc = bottleneck(lab, 'v1');
    const rows = await watch(v, 20);
    const last = rows.at(-1).device ?? await until('device stats', () => deviceStats(v.page));
    const endTc = bottleneck(lab, 'v1');
    const seconds = rows.reduce((a, r) => a + r.seconds, 0);
    const resentBytes = last.retransmitted_bytes - first.retransmitted_bytes;
    const estimates = rows.map((r) => r.device?.estimate_kbps).filter((e) => e != null);
    const meanEstimate = estimates.reduce((a, e) => a + e, 0) / estimates.length;
    const resentKbps = (resentBytes * 8) / 1000 / seconds;
    const sent = endTc.sentPackets - startTc.sentPackets;
    const dropped = endTc.droppedPackets - startTc.droppedPackets;
    const decoded = rows.at(-1).total.framesDecoded - rows[0].total.framesDecoded + Math.round(rows[0].fps);
    const line = `retransmitted ${resentKbps.toFixed(1)} kbit/s (${last.retransmitted_packets - first.retransmitted_packets} packets ` +
      `for ${last.nacked_packets - first.nacked_packets} NACKed) against a mean estimate of ${meanEstimate.toFixed(0)} kbit/s; ` +
      `the bottleneck carried ${sent} packets and dropped ${dropped}; ${decoded} frames decoded in ${seconds.toFixed(0)} s`;
    t.diagnostic(line);
    console.log(line);
    assert.ok(resentBytes > 0, 'the lossy link needed retransmissions');
    // The share (25 %) of the estimate, plus the bucket's burst over the window.
    assert.ok(resentKbps <= 0.25 * meanEstimate + 3600 * 8 / 1000 / seconds,
      `retransmissions bounded: ${resentKbps} kbit/s against ${meanEstimate} kbit/s`);
    // What the device offered the bottleneck is of the order of what it carried (the storm of
    // issue 15 offered it 35 times its rate).
    assert.ok(dropped < sent, `the bottleneck dropped ${dropped} of ${sent + dropped} packets`);
    assert.ok(decoded > 0, 'the viewer kept decoding');
  });
});

test('under an 800 kbit/s cap the estimate and the shared encoder come down', async (t) => {
  await withLab(t, {
    viewers: { v1: { rate_kbit: 800, delay_ms: 20 } },
    args: ['--bitrate', '2000', '--max-bitrate', '2500'],
  }, async ({ viewers: [v] }) => {
    const rows = await watch(v, 20);
    const late = rows.slice(-10).map((r) => r.device).filter(Boolean);
    t.diagnostic(`last 10 s: ${JSON.stringify(late.map((d) => [d.estimate_kbps, d.target_kbps]))}`);
    assert.ok(late.length >= 5, 'device stats came');
    // Started at 2000 kbit/s: the estimate and the encoder's target are now under the cap
    // (the estimate probes above it now and then; most of the time it is below).
    const under = late.filter((d) => d.estimate_kbps <= 850 && d.target_kbps <= 850).length;
    assert.ok(under >= late.length / 2, `estimate and target under the 800 kbit/s cap: ${under} of ${late.length}`);
    assert.ok(late.every((d) => d.target_kbps >= 150), 'never below --min-bitrate');
    const decoded = rows.at(-1).total.framesDecoded - rows[0].total.framesDecoded;
    assert.ok(decoded > 0, 'frames kept coming');
  });
});

test('on a shared 3 Mbit/s uplink a clean viewer keeps every layer beside a lossy 500 kbit/s one', async (t) => {
  await withLab(t, {
    device: { up: { rate_kbit: 3000 }, emulator: true },
    viewers: { v1: {}, v2: { rate_kbit: 500, delay_ms: 40, loss: 0.03 } },
    args: RANGE,
  }, async ({ viewers: [clean, bad] }) => {
    await sleep(8000);
    const a0 = await inbound(clean.page);
    const b0 = await inbound(bad.page);
    const cleanStats = [];
    const badStats = [];
    for (let s = 0; s < 15; s++) {
      await sleep(1000);
      cleanStats.push(await deviceStats(clean.page));
      badStats.push(await deviceStats(bad.page));
    }
    const a1 = await inbound(clean.page);
    const b1 = await inbound(bad.page);
    const ca = delta(a0, a1);
    const ba = delta(b0, b1);
    const line = `clean viewer ${ca.fps.toFixed(1)} fps, ${ca.freezes} freezes; lossy viewer ${ba.fps.toFixed(1)} fps; ` +
      `layers clean ${JSON.stringify(cleanStats.map((d) => d?.layer))}, lossy ${JSON.stringify(badStats.map((d) => d?.layer))}`;
    t.diagnostic(line);
    console.log(line);
    const layers = cleanStats.find(Boolean)?.layers;
    assert.equal(layers, 3, 'the encoder makes three temporal layers');
    // The clean viewer gets the whole stream (every layer) nearly all the time; the lossy one
    // gets fewer frames of the same stream.
    const full = cleanStats.filter((d) => d && d.layer === layers - 1).length;
    assert.ok(full >= 12, `clean viewer on the top layer in ${full} of 15 samples`);
    assert.ok(badStats.some((d) => d && d.layer < layers - 1), 'the lossy viewer is sent fewer layers');
    assert.ok(ca.fps > 1.5 * ba.fps, `clean ${ca.fps} fps against lossy ${ba.fps} fps`);
    assert.ok(ba.fps > 0, 'the lossy viewer keeps decoding');

    // The stats overlay says so, with the device's figures for each viewer.
    for (const [viewer, wanted] of [[clean, /layers +receiving 3 of 3\n/], [bad, /layers +receiving [12] of 3 \(fewer frames/]]) {
      await viewer.page.keyboard.press('s');
      const text = await until('the overlay with the link figures', async () => {
        const t = await viewer.page.locator('#stats').textContent();
        return /estimate \d+ kbit\/s/.test(t) ? t : null;
      });
      t.diagnostic(`${viewer.host} overlay:\n${text}`);
      assert.match(text, wanted);
      assert.match(text, /freezes +\d+ \(\d+\.\d s\)/);
      assert.match(text, /encoder +\d+ kbit\/s shared target/);
    }
  });
});

test('after the link is cut for 5 s the picture returns without a new offer', async (t) => {
  await withLab(t, { viewers: { v1: { delay_ms: 20 } }, args: RANGE }, async ({ lab, viewers: [v] }) => {
    await sleep(4000);
    const recovery = await cutAndRecover(lab, 'v1', v.page, 5, 20000);
    const line = `cut 5 s: next decoded frame ${recovery.restoredToFrameMs?.toFixed(0)} ms after the link's return ` +
      `(sessions ${recovery.sessionsBefore} -> ${recovery.sessionsAfter})`;
    t.diagnostic(line);
    console.log(line);
    assert.notEqual(recovery.restoredToFrameMs, null, 'the picture came back');
    assert.equal(recovery.sessionsAfter, recovery.sessionsBefore, 'in the same session (no new offer)');
    const rows = await watch(v, 3);
    assert.ok(rows.every((r) => r.fps > 0), `frames keep coming: ${rows.map((r) => r.fps.toFixed(1))}`);
  });
});
