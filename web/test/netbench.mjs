// `make netbench` (issue 14): offer -> first frame through NATs and TURN, on the namespace test
// network (tests/netlab): the daemon behind its NAT router, Mosquitto and coturn in the
// "internet", and a viewer behind its own router: `spyglass view` and headless Chromium. For each
// case: the candidate pair ICE selected (types, device side and viewer side) and offer -> first
// frame over N sessions (median, p95), with Chromium's stages (answer, ICE, DTLS, frame).
// A benchmark, not a test: nothing here fails on a time.
//
// Usage (from web/): node test/netbench.mjs [N] [--delay MS] [--case cone|relay|relay2]...
//   N: sessions per viewer and case (default 10); --delay: one-way delay added on each site's
//   link (default 10 ms, so the relayed path's round trip grows by 4 x MS).
// Binary: $SPYGLASS_BIN (the Makefile gives the release build) or cargo's debug build.

import { createInterface } from 'node:readline';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Netlab } from './netlab.mjs';
import { spyglassBin, webDir, sleep } from './harness.mjs';

const args = process.argv.slice(2);
const n = Number(args.find((a) => /^\d+$/.test(a)) ?? 10);
const opt = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const delayMs = Number(opt('--delay', 10));
const only = args.flatMap((a, i) => (args[i - 1] === '--case' ? [a] : []));
const bin = spyglassBin();
const q = (v, p) => (v.length ? [...v].sort((a, b) => a - b)[Math.round((v.length - 1) * p)] : null);
const median = (v) => q(v, 0.5);

// Whether this `spyglass view` can be given ICE servers (the viewer half of issue 14).
const viewHelp = execFileSync(bin, ['view', '--help'], { encoding: 'utf8' });
const viewHasTurn = viewHelp.includes('--turn');

const CASES = {
  // NAT case 1: the device behind a cone NAT with STUN, the viewer on the internet side.
  cone: {
    spec: { sites: [{ name: 'dev', nat: 'cone' }, { name: 'v1', nat: 'none' }], turn: { auth: 'lt' } },
    device: (lab) => ['--stun', lab.info.turn.stun_url],
    iceServers: (lab) => [{ urls: lab.info.turn.stun_url }],
    viewTurn: false,
  },
  // NAT case 2: both behind symmetric NATs, TURN over UDP on both sides: only a relay works.
  relay: {
    spec: { sites: [{ name: 'dev', nat: 'symmetric' }, { name: 'v1', nat: 'symmetric' }], turn: { auth: 'lt' } },
    device: (lab) => ['--stun', lab.info.turn.stun_url, '--turn', lab.info.turn.urls.udp,
      '--turn-username', lab.info.turn.username, '--turn-password-file', lab.passwordFile],
    iceServers: (lab) => lab.iceServers(['udp']),
    viewTurn: true,
  },
  // As `relay`, and the device's router passes no UDP between the device and the TURN server's
  // relay ports, so the device cannot reach the viewer's relay directly and must send through its
  // own: a relay/relay pair, the device's relayed path (its TURN client) carrying everything.
  relay2: {
    spec: { sites: [{ name: 'dev', nat: 'symmetric' }, { name: 'v1', nat: 'symmetric' }], turn: { auth: 'lt' } },
    prepare: (lab) => {
      for (const dir of ['daddr', 'saddr']) {
        const port = dir === 'daddr' ? 'dport' : 'sport';
        execFileSync('ip', ['netns', 'exec', lab.ns('dev-router'), 'nft', 'insert', 'rule', 'ip', 'netlab',
          'forward', 'ip', dir, lab.info.turn.host, 'udp', port, '49152-65535', 'drop']);
      }
    },
    device: (lab) => CASES.relay.device(lab),
    iceServers: (lab) => lab.iceServers(['udp']),
    viewTurn: true,
  },
};

/** The daemon in `dev`; resolves once it logs "online". */
async function startDaemon(lab, extra) {
  const id = `bench/cam-${Math.floor(Math.random() * 1e9)}`;
  const child = lab.spawn('dev', bin, [
    '--id', id, '--mqtt', lab.info.broker.url, '--video', 'test', '--size', '640x480',
    '--bitrate', '1000', '--rtc-bind', lab.ip('dev'), '--mdns', 'off', '--http', 'off',
    '--audio', 'none', '--max-viewers', '8', ...extra,
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  const log = [];
  const lines = createInterface({ input: child.stderr });
  const online = new Promise((resolve, reject) => {
    lines.on('line', (line) => {
      log.push(line);
      if (line.includes(' online')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`spyglass exited (${code}):\n${log.join('\n')}`)));
  });
  await Promise.race([online, sleep(20000).then(() => { throw new Error(`spyglass not online:\n${log.join('\n')}`); })]);
  return { id, child, log };
}

/** One `spyglass view` session from `v1`: its JSON report. */
function viewOnce(lab, daemon, extra) {
  return new Promise((resolve) => {
    const child = lab.spawn('v1', bin, ['view', '--mqtt', lab.info.broker.url, '--id', daemon.id,
      '--frames', '5', '--timeout', '20', '--rtc-bind', lab.ip('v1'), '--mdns', 'off', '--json', ...extra],
    { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.once('exit', () => {
      try {
        resolve(JSON.parse(out.trim()));
      } catch {
        resolve({ frames: 0, error: { message: `no report: ${out.slice(0, 200)}` } });
      }
    });
  });
}

/** One Chromium session in `page`: stages (ms after the offer) and the selected pair's types. */
function chromiumOnce(page, broker, uid, iceServers) {
  return page.evaluate(async ([broker, uid, iceServers]) => {
    const cid = `bench-${Math.random().toString(16).slice(2, 10)}`;
    const topic = (kind) => `${uid}/${kind}/${cid}`;
    const client = window.mqtt.connect(broker, { protocolVersion: 5, clientId: cid, reconnectPeriod: 0 });
    await new Promise((resolve, reject) => { client.once('connect', resolve); client.once('error', reject); });
    await client.subscribeAsync([topic('answer'), topic('ice'), topic('error')], { qos: 1, nl: true });
    const pc = new RTCPeerConnection({ iceServers });
    pc.addTransceiver('video', { direction: 'recvonly' });
    const stages = {};
    let t0 = 0;
    const mark = (s) => { if (t0 && !(s in stages)) stages[s] = Math.round(performance.now() - t0); };
    const video = document.createElement('video');
    video.muted = true;
    video.autoplay = true;
    document.body.append(video);
    const frame = new Promise((resolve) => {
      video.requestVideoFrameCallback(() => { mark('frame'); resolve(); });
    });
    pc.ontrack = (e) => { video.srcObject = new MediaStream([e.track]); video.play().catch(() => {}); };
    pc.onicecandidate = (e) => {
      const c = e.candidate;
      client.publish(topic('ice'), JSON.stringify(c && c.candidate ? c.toJSON() : { candidate: '' }), { qos: 1 });
    };
    pc.oniceconnectionstatechange = () => { if (pc.iceConnectionState === 'connected') mark('ice'); };
    const held = [];
    let answered = false;
    let failure = null;
    client.on('message', async (t, payload) => {
      const m = JSON.parse(payload.toString());
      if (t === topic('answer')) {
        mark('answer');
        await pc.setRemoteDescription({ type: 'answer', sdp: m.sdp });
        const dtls = pc.getTransceivers()[0]?.receiver.transport;
        dtls?.addEventListener('statechange', () => { if (dtls.state === 'connected') mark('dtls'); });
        answered = true;
        for (const c of held.splice(0)) await pc.addIceCandidate(c).catch(() => {});
      } else if (t === topic('ice')) {
        const c = m.candidate ? m : { candidate: '', sdpMid: m.sdpMid ?? '0', sdpMLineIndex: m.sdpMLineIndex ?? 0 };
        if (answered) await pc.addIceCandidate(c).catch(() => {});
        else held.push(c);
      } else if (t === topic('error')) {
        failure = `${m.code}: ${m.message}`;
      }
    });
    await pc.setLocalDescription(await pc.createOffer());
    t0 = performance.now();
    client.publish(topic('offer'), JSON.stringify({ type: 'offer', sdp: pc.localDescription.sdp }), { qos: 1 });
    await Promise.race([frame, new Promise((r) => setTimeout(r, 20000))]);
    let pair = null;
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        const p = stats.get(s.selectedCandidatePairId);
        const local = stats.get(p.localCandidateId);
        const remote = stats.get(p.remoteCandidateId);
        pair = { viewer: `${local.candidateType}/${local.protocol}`, device: `${remote.candidateType}/${remote.protocol}` };
      }
    });
    pc.close();
    video.remove();
    client.end(true);
    return { stages, pair, failure };
  }, [broker, uid, iceServers]);
}

function summary(values) {
  const v = values.filter((x) => x != null);
  return v.length ? `${median(v)} / ${q(v, 0.95)} ms (${v.length} of ${n})` : 'n/a';
}

function pairs(list) {
  const counts = {};
  for (const p of list) if (p) counts[p] = (counts[p] ?? 0) + 1;
  return Object.entries(counts).map(([p, c]) => `${p} ×${c}`).join(', ') || 'none';
}

const rows = [];
for (const [name, c] of Object.entries(CASES)) {
  if (only.length && !only.includes(name)) continue;
  const spec = structuredClone(c.spec);
  if (delayMs > 0) for (const site of spec.sites) site.link = { delay_ms: delayMs };
  process.stderr.write(`[netbench] case ${name}: building the network\n`);
  const lab = Netlab.up(spec, { check: 'basic' });
  let browser;
  try {
    lab.passwordFile = join(lab.info.state_dir, 'turn-password');
    writeFileSync(lab.passwordFile, lab.info.turn.password, { mode: 0o600 });
    c.prepare?.(lab);
    const daemon = await startDaemon(lab, c.device(lab));

    // spyglass view
    const devicePairs = (from) => daemon.log.slice(from)
      .map((l) => l.match(/selected pair local=(\S+) remote=(\S+)/))
      .filter(Boolean)
      .map((m) => `device ${m[1]}, viewer ${m[2]}`);
    const view = { first: [], connected: [], pairs: [], errors: [] };
    let logMark = daemon.log.length;
    if (!c.viewTurn || viewHasTurn) {
      const extra = c.viewTurn ? ['--stun', lab.info.turn.stun_url, '--turn', lab.info.turn.urls.udp,
        '--turn-username', lab.info.turn.username, '--turn-password-file', lab.passwordFile] : [];
      for (let i = 0; i < n; i++) {
        const r = await viewOnce(lab, daemon, extra);
        view.first.push(r.first_frame_ms != null ? Math.round(r.first_frame_ms) : null);
        view.connected.push(r.connected_ms != null ? Math.round(r.connected_ms) : null);
        view.pairs.push(r.pair ?? null);
        if (r.error) view.errors.push(r.error.message);
        await sleep(300);
      }
    }
    view.devicePairs = devicePairs(logMark);
    logMark = daemon.log.length;

    // Chromium
    browser = await lab.launchBrowser('v1');
    const page = await browser.context.newPage();
    await page.addScriptTag({ path: join(webDir, 'node_modules', 'mqtt', 'dist', 'mqtt.min.js') });
    const chrome = { first: [], stages: {}, pairs: [], errors: [] };
    for (let i = 0; i < n; i++) {
      const r = await chromiumOnce(page, lab.info.broker.ws_url, daemon.id, c.iceServers(lab));
      chrome.first.push(r.stages.frame ?? null);
      for (const [s, ms] of Object.entries(r.stages)) (chrome.stages[s] ??= []).push(ms);
      chrome.pairs.push(r.pair ? `device ${r.pair.device}, viewer ${r.pair.viewer}` : null);
      if (r.failure) chrome.errors.push(r.failure);
      await sleep(300);
    }
    await sleep(500);
    chrome.devicePairs = devicePairs(logMark);
    rows.push({ name, view, chrome });
    process.stderr.write(`[netbench] ${name}: view ${JSON.stringify(view)}\n[netbench] ${name}: chromium ${JSON.stringify(chrome)}\n`);
  } finally {
    await browser?.close();
    lab.down();
  }
}

const rtt = 4 * delayMs;
const L = [];
L.push(`## netbench: offer → first frame through NAT and TURN (${n} sessions per viewer and case)`);
L.push('');
L.push(`Binary \`${bin}\`; ${delayMs} ms one-way delay on each site's link (a path through the relay has ${rtt} ms more round trip). Load average ${execFileSync('cat', ['/proc/loadavg'], { encoding: 'utf8' }).split(' ').slice(0, 3).join(' ')}.`);
L.push('');
L.push('| case | viewer | selected pair as the device saw it (local, remote) | as the viewer saw it (device, viewer) | offer → first frame, median / p95 | stages, median (answer, ICE, DTLS, frame) |');
L.push('|---|---|---|---|---|---|');
for (const r of rows) {
  const vp = pairs(r.view.pairs.map((p) => p && p.replace(/local=(\S+) remote=(\S+)/, 'device $2, viewer $1')));
  if (r.view.first.length) {
    L.push(`| ${r.name} | \`spyglass view\` | ${pairs(r.view.devicePairs)} | ${vp} | ${summary(r.view.first)} | connected ${summary(r.view.connected)} |`);
  } else {
    L.push(`| ${r.name} | \`spyglass view\` | n/a: \`spyglass view\` has no --turn yet | | | |`);
  }
  const st = ['answer', 'ice', 'dtls', 'frame'].map((s) => median(r.chrome.stages[s] ?? []) ?? '-').join(', ');
  L.push(`| ${r.name} | Chromium | ${pairs(r.chrome.devicePairs)} | ${pairs(r.chrome.pairs)} | ${summary(r.chrome.first)} | ${st} ms |`);
  const errors = [...r.view.errors, ...r.chrome.errors];
  if (errors.length) L.push(`| | errors | ${[...new Set(errors)].join('; ').slice(0, 300)} | | | |`);
}
L.push('');
L.push(`Goal for the relay case (issue 14): ≤ 2 × the Chromium loopback p50 of \`make bench\` + 3 × ${rtt} ms.`);
console.log(L.join('\n'));
