// The namespace test network from node: headless Chromium inside a viewer namespace behind a
// symmetric NAT reaches the broker's WebSocket listener, learns its public address from coturn
// (STUN) and gets relay candidates from it (TURN over UDP, TCP and TLS); nothing of the network
// or of the browser is left afterwards.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Netlab } from './netlab.mjs';

/** Candidates that Chromium gathers with `iceServers` (and `policy`), as {type, address, relayProtocol}. */
async function gather(page, iceServers, policy = 'all') {
  return page.evaluate(async ([iceServers, policy]) => {
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: policy });
    pc.createDataChannel('probe');
    const found = [];
    const done = new Promise((resolve) => {
      pc.onicecandidate = (e) => {
        if (!e.candidate) return resolve();
        const c = e.candidate;
        found.push({ type: c.type, address: c.address, protocol: c.protocol, relayProtocol: c.relayProtocol });
      };
      setTimeout(resolve, 8000);
    });
    await pc.setLocalDescription(await pc.createOffer());
    await done;
    pc.close();
    return found;
  }, [iceServers, policy]);
}

function pidsIn(ns) {
  return execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).split(/\s+/).filter(Boolean);
}

test('Chromium in a namespace behind symmetric NAT: broker over WebSockets, STUN and TURN', async () => {
  const lab = Netlab.up({ sites: [{ name: 'v1', nat: 'symmetric' }] }, { check: 'basic' });
  const v1 = lab.host('v1');
  let browser;
  try {
    browser = await lab.launchBrowser('v1');
    const chromiumPids = pidsIn(v1.ns);
    assert.ok(chromiumPids.length >= 1, 'no Chromium process in the namespace');
    const page = await browser.context.newPage();

    const ws = await page.evaluate((url) => new Promise((resolve) => {
      const s = new WebSocket(url, 'mqtt');
      s.onopen = () => { s.close(); resolve('open'); };
      s.onerror = () => resolve('error');
    }), lab.info.broker.ws_url);
    assert.equal(ws, 'open', `WebSocket to ${lab.info.broker.ws_url}`);

    const all = await gather(page, lab.iceServers(['udp']));
    const srflx = all.filter((c) => c.type === 'srflx');
    const relay = all.filter((c) => c.type === 'relay');
    assert.ok(srflx.some((c) => c.address === v1.public_ip), `srflx ${JSON.stringify(all)}`);
    assert.ok(relay.some((c) => c.address === lab.info.turn.host), `relay ${JSON.stringify(all)}`);

    // TURN over TCP and over TLS alone (a relay-only policy shows what each gives).
    for (const kind of ['tcp', 'tls']) {
      const got = await gather(page, lab.iceServers([kind]).slice(1), 'relay');
      console.log(`Chromium, TURN over ${kind} only: ${JSON.stringify(got)}`);
      assert.ok(got.some((c) => c.type === 'relay' && c.address === lab.info.turn.host),
        `no relay candidate over ${kind}: ${JSON.stringify(got)}`);
    }

    await browser.close();
    browser = null;
    lab.down();
    // Still running (a zombie waiting to be reaped by init holds nothing but its PID).
    const still = [];
    for (const pid of chromiumPids) {
      let stat;
      try {
        stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      } catch {
        continue;
      }
      if (!/^\S+ \(.*\) Z/.test(stat)) still.push(stat.slice(0, 60));
    }
    assert.deepEqual(still, [], 'Chromium processes outlived the network');
    const namespaces = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
    assert.ok(!namespaces.includes(lab.tag), namespaces);
  } finally {
    await browser?.close();
    lab.down();
  }
});
