// A WHEP viewer that spyglass did not write: the `whip-whep` npm package's WHEPClient in headless
// Chromium, pointed at a URL (and an optional bearer token). It reports what a test needs to
// judge a WHEP endpoint: every HTTP exchange the client made (method, status, Location, Link,
// ETag, content type), frames decoded, the video's size, audio packets, and the time from the
// client's POST to the first frame shown.
//
//   const v = await watchWhep(context, pages, { url, token, timeoutMs });
//   v.ok, v.error, v.exchanges, v.firstFrameMs, v.framesDecoded, v.videoWidth, ...
//   const exchanges = await v.stop();   // whip-whep's stop(): closes the pc, DELETEs the session
//
// CLI (prints the same report as JSON; exit status 0 when frames were decoded):
//   node test/standards/whep-viewer.mjs URL [--token T] [--seconds N]

import { fileURLToPath } from 'node:url';
import { launchBrowser, sleep } from '../harness.mjs';
import { PageServer } from './pages.mjs';

/** The page's current report (see the module comment). */
function report(page) {
  return page.evaluate(async () => {
    const w = window.whepViewer;
    const out = {
      ok: false,
      error: w.error,
      exchanges: w.exchanges,
      postAt: w.exchanges.find((x) => x.method === 'POST')?.at ?? null,
      firstFrameAt: w.firstFrameAt,
      firstFrameMs: null,
      framesDecoded: 0,
      audioPackets: 0,
      videoWidth: 0,
      videoHeight: 0,
      connectionState: w.pc.connectionState,
    };
    if (w.pc.connectionState !== 'closed') {
      (await w.pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') out.framesDecoded = s.framesDecoded ?? 0;
        if (s.type === 'inbound-rtp' && s.kind === 'audio') out.audioPackets = s.packetsReceived ?? 0;
      });
    }
    const v = document.getElementById('video');
    out.videoWidth = v.videoWidth;
    out.videoHeight = v.videoHeight;
    if (out.postAt && out.firstFrameAt) out.firstFrameMs = out.firstFrameAt - out.postAt;
    out.ok = !out.error && out.framesDecoded > 0 && out.videoWidth > 0 && out.firstFrameAt !== null;
    return out;
  });
}

/**
 * Watch `url` with WHEPClient in a new page of `context` (pages: a PageServer). Resolves when a
 * frame was decoded, when the client failed, or after `timeoutMs`, with the report and
 * `{ page, report(), stop() }`.
 */
export async function watchWhep(context, pages, { url, token, timeoutMs = 15000 }) {
  const page = await context.newPage();
  await page.goto(pages.blank);
  await page.evaluate(async ({ url, token, origin }) => {
    const { WHEPClient } = await import(`${origin}/whep.js`);
    const { recordExchanges } = await import(`${origin}/exchanges.js`);
    const w = { exchanges: recordExchanges(), error: null, firstFrameAt: null };
    window.whepViewer = w;
    const pc = new RTCPeerConnection();
    w.pc = pc;
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    const video = document.getElementById('video');
    pc.ontrack = (e) => {
      if (e.track.kind !== 'video') return;
      video.srcObject = new MediaStream([e.track]);
      video.requestVideoFrameCallback(() => { w.firstFrameAt = Date.now(); });
    };
    w.client = new WHEPClient();
    // Not awaited here: the caller polls the report.
    w.client.view(pc, url, token || undefined).catch((e) => { w.error = String(e.message ?? e); });
  }, { url, token, origin: pages.origin });

  const end = Date.now() + timeoutMs;
  let r = await report(page);
  while (!r.ok && !r.error && Date.now() < end) {
    await sleep(50);
    r = await report(page);
  }
  if (!r.ok && !r.error) r.error = `no frame decoded within ${timeoutMs} ms`;
  return {
    ...r,
    page,
    report: () => report(page),
    /** whip-whep's stop() (DELETE of the session); resolves with all the exchanges. */
    async stop() {
      await page.evaluate(() => window.whepViewer.client.stop()).catch(() => {});
      const exchanges = await page.evaluate(() => window.whepViewer.exchanges).catch(() => r.exchanges);
      await page.close().catch(() => {});
      return exchanges;
    },
  };
}

async function main(argv) {
  const url = argv.find((a) => !a.startsWith('--'));
  const option = (name) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  if (!url) {
    console.error('usage: node test/standards/whep-viewer.mjs URL [--token T] [--seconds N]');
    return 2;
  }
  const seconds = Number(option('--seconds') ?? 15);
  const browser = await launchBrowser();
  const pages = await PageServer.start();
  try {
    const v = await watchWhep(browser.context, pages, { url, token: option('--token'), timeoutMs: seconds * 1000 });
    const { page: _p, report: _r, stop, ...out } = v;
    out.exchanges = await stop();
    console.log(JSON.stringify(out, null, 2));
    return out.ok ? 0 : 1;
  } finally {
    await pages.close();
    await browser.close();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  process.exitCode = await main(process.argv.slice(2));
}
