// What a client of pi-webrtc's v2 MQTT topics gets from spyglass (README: "clients of pi-webrtc
// v2's topics get video and audio"). The test plays such a client's part as picamera.js's peer
// code behaves (TzuHuanTai/picamera.js v1.3.1, read from source: /work/wave/notes/picamera-client.md
// in the wave, summarised in docs/PROTOCOL.md "pi-webrtc clients"), on pi-webrtc v2's topic
// layout:
//
// - MQTT 5 over WebSocket, client id = a UUID, subscribes to {uid}/answer/{cid} and
//   {uid}/ice/{cid} at QoS 2 WITHOUT No-Local, and hands every ICE message to addIceCandidate,
//   its own echoes included (picamera.js filters nothing);
// - RTCPeerConnection with iceCandidatePoolSize 10 (candidates gathered before the offer, which
//   then come as a burst right behind it), a microphone requested without waiting, video
//   recvonly and audio sendrecv transceivers, the pre-negotiated `command` data channel (id 0);
// - publishes the createOffer() result on {uid}/offer/{cid} at QoS 0, then each candidate, never
//   an end of candidates;
// - needs `event.streams[0].id` on every track, gives up if not connected within 10 s, and
//   closes its MQTT connection once connected.
//
// The data channel: spyglass does not speak pi-webrtc's protobuf commands; the client's bytes
// on stream 0 (the DISCONNECT packet it sends on leaving) must do no harm.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import mqtt from 'mqtt';
import { Broker, Spyglass, fileFixture, sleep, until } from './harness.mjs';
import { PageServer } from './standards/pages.mjs';

const fixture = fileFixture({
  browser: true,
  // A microphone for getUserMedia, granted without asking (as a user who allowed it).
  browserArgs: ['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream'],
});
const { cleanups } = fixture;

test('a pi-webrtc v2-topic client (picamera.js\'s peer) gets video and audio; its command channel does no harm', async (t) => {
  const broker = await Broker.start();
  cleanups.push(() => broker.close());
  const daemon = await Spyglass.start(broker, { size: '320x240', extra: ['--audio', 'tone'] });
  cleanups.push(() => daemon.close());
  const pages = await PageServer.start();
  cleanups.push(() => pages.close());
  const uid = daemon.id;
  const cid = randomUUID();

  // The client's MQTT side.
  const client = await mqtt.connectAsync(broker.wsUrl, {
    protocolVersion: 5, clientId: cid, clean: true, keepalive: 20, reconnectPeriod: 0,
  });
  cleanups.push(() => client.endAsync(true).catch(() => {}));
  await client.subscribeAsync([`${uid}/answer/${cid}`, `${uid}/ice/${cid}`], { qos: 2 });
  const received = { answer: 0, ice: 0, echoes: 0 };

  const page = await fixture.browser.context.newPage();
  cleanups.push(() => page.close());
  await page.goto(pages.blank);
  await page.exposeFunction('publishSignal', (kind, json) => {
    client.publish(`${uid}/${kind}/${cid}`, json, { qos: 0 });
  });
  client.on('message', (topic, payload) => {
    const text = payload.toString();
    if (topic.endsWith(`/answer/${cid}`)) {
      received.answer++;
      received.answerSdp = JSON.parse(text).sdp;
      page.evaluate((m) => window.client.onAnswer(JSON.parse(m)), text).catch(() => {});
    } else {
      received.ice++;
      if (JSON.parse(text).usernameFragment !== undefined) received.echoes++;
      page.evaluate((m) => window.client.onIce(JSON.parse(m)), text).catch(() => {});
    }
  });

  await page.evaluate(async () => {
    const c = { tracks: [], streamIds: [], dcState: null, connectedAt: null, startedAt: Date.now(), addErrors: 0 };
    window.client = c;
    const pc = new RTCPeerConnection({ iceServers: [], iceCandidatePoolSize: 10 });
    c.pc = pc;
    let remoteSet = false;
    const queued = [];
    c.onAnswer = async (answer) => {
      await pc.setRemoteDescription(answer);
      remoteSet = true;
      for (const q of queued.splice(0)) pc.addIceCandidate(q).catch(() => { c.addErrors++; });
    };
    c.onIce = (candidate) => {
      if (!remoteSet) queued.push(candidate);
      else pc.addIceCandidate(candidate).catch(() => { c.addErrors++; });
    };
    pc.onicecandidate = (e) => {
      if (e.candidate) window.publishSignal('ice', JSON.stringify(e.candidate));
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'connected' && !c.connectedAt) c.connectedAt = Date.now();
    };
    pc.ontrack = (e) => {
      // picamera.js: event.streams[0].id.split('|') — throws without a stream.
      const [streamId] = e.streams[0].id.split('|');
      c.tracks.push(e.track.kind);
      c.streamIds.push(streamId);
      if (e.track.kind === 'video') document.getElementById('video').srcObject = e.streams[0];
    };
    // The microphone, not awaited (createlocalAudioStream), then the transceivers and channel.
    navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true }, video: false })
      .then((stream) => stream.getTracks().forEach((track) => pc.addTrack(track, stream)))
      .catch((e) => { c.micError = String(e); });
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'sendrecv' });
    const dc = pc.createDataChannel('command', { negotiated: true, id: 0, ordered: true });
    dc.binaryType = 'arraybuffer';
    dc.onopen = () => { c.dcState = 'open'; };
    dc.onclose = () => { c.dcState = 'closed'; };
    c.dc = dc;
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    c.offerSdp = offer.sdp;
    window.publishSignal('offer', JSON.stringify(offer));
  });

  const offerSdp = await page.evaluate(() => window.client.offerSdp);
  assert.match(offerSdp, /m=video[\s\S]*a=recvonly[\s\S]*m=audio[\s\S]*a=sendrecv[\s\S]*m=application/);
  await until('connected within picamera.js\'s 10 s', () => page.evaluate(() => window.client.connectedAt), 10000);
  const c0 = await page.evaluate(() => ({ ms: window.client.connectedAt - window.client.startedAt, mic: window.client.micError ?? 'ok' }));
  t.diagnostic(`connected ${c0.ms} ms after the offer; microphone: ${c0.mic}; ICE messages received ${received.ice} (own echoes ${received.echoes})`);
  // Once connected, picamera.js closes its MQTT connection; the stream goes on without it.
  await client.endAsync();
  assert.equal(received.answer, 1);
  // Its microphone's sendrecv audio line is answered sendonly: the device sends its own audio.
  assert.match(received.answerSdp, /m=audio [^\r]*\r\n(?:(?!m=)[^\r]*\r\n)*a=sendonly/);

  const stats = () => page.evaluate(async () => {
    const out = { frames: 0, audioPackets: 0 };
    (await window.client.pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') out.frames = s.framesDecoded ?? 0;
      if (s.type === 'inbound-rtp' && s.kind === 'audio') out.audioPackets = s.packetsReceived ?? 0;
    });
    return out;
  });
  await until('video frames and audio', async () => {
    const s = await stats();
    return s.frames > 10 && s.audioPackets > 10;
  });
  const client0 = await page.evaluate(() => ({
    tracks: window.client.tracks, streamIds: window.client.streamIds, dc: window.client.dcState,
    width: document.getElementById('video').videoWidth,
  }));
  assert.deepEqual([...client0.tracks].sort(), ['audio', 'video']);
  assert.deepEqual(client0.streamIds, ['spyglass', 'spyglass']);
  assert.equal(client0.width, 320);
  // The pre-negotiated channel opens (the device accepted m=application); the DISCONNECT packet
  // picamera.js sends on it (protobuf `12 00`) and some more bytes do no harm.
  await until('command channel open', () => page.evaluate(() => window.client.dcState === 'open'));
  await page.evaluate(() => {
    window.client.dc.send(new Uint8Array([0x12, 0x00]));
    window.client.dc.send(new Uint8Array(1000).fill(0x08));
  });
  const before = (await stats()).frames;
  await sleep(1500);
  const after = await stats();
  assert.ok(after.frames > before + 20, `video goes on: ${before} -> ${after.frames}`);
  assert.equal(await page.evaluate(() => window.client.pc.connectionState), 'connected');
  assert.doesNotMatch(daemon.log(), /panicked/);
});
