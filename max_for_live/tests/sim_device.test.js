'use strict';
// The BUILT device (STAGE Bridge.amxd: its patcher and frozen scripts) in the Max simulation
// (max_for_live/sim), talking real OSC over UDP to a stand-in daemon played by the test. The assertions
// are what a musician sees (status, menus, Live's clips) and what goes over the wire. Whole scenarios against
// the real daemon: tests/test_m4l_sim.py. (Replaces the former fake Max of stage_device.test.js.)
const test = require('node:test');
const assert = require('node:assert/strict');
const dgram = require('node:dgram');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { Sim, defaultLiveSet } = require('../sim');
const osc = require('../sim/osc');
const { isWav } = require('../sim/live');

// A UDP stand-in for the daemon: collects what the device sends, answers to the device's receive port.
async function standIn() {
  const sock = dgram.createSocket('udp4');
  const got = [];
  sock.on('message', (buf) => got.push(osc.decode(buf)));
  await new Promise((r) => sock.bind(0, '127.0.0.1', r));
  return {
    port: sock.address().port, got,
    plain: () => got.map((m) => [m.address, ...m.args.map((a) => a.value)]),
    reply(port, address, ...args) {
      sock.send(osc.encode(address, args.map((v) => (typeof v === 'string' ? { type: 's', value: v } : { type: Number.isInteger(v) ? 'i' : 'f', value: v }))), port, '127.0.0.1');
    },
    close: () => sock.close(),
  };
}

async function freePort() {
  const s = dgram.createSocket('udp4');
  await new Promise((r) => s.bind(0, '127.0.0.1', r));
  const port = s.address().port;
  await new Promise((r) => s.close(r));
  return port;
}

// A device on a Mac whose home folder is a temporary folder (paths hold spaces, as the default home does).
async function loadDevice(t, options = {}) {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'sim device '));
  const daemon = await standIn();
  const recv = await freePort();
  const home = path.join(root, 'Users', 'alice', 'Library', 'Application Support', 'stage-bridge');
  fs.mkdirSync(path.join(home, 'bounces'), { recursive: true });
  fs.mkdirSync(path.join(home, 'outbox'), { recursive: true });
  const sim = new Sim(Object.assign({
    os: 'macintosh', devicePath: `Macintosh HD:${root}/Users/alice/Music/Ableton/User Library/STAGE Bridge.amxd`,
    parameters: { 'Send port': daemon.port, 'Receive port': recv },
  }, options));
  t.after(() => { sim.close(); daemon.close(); fs.rmSync(root, { recursive: true, force: true }); });
  sim.start();
  return { sim, daemon, recv, home, root };
}

// connect: answer the first ping and the info request, as the daemon would
async function connect(d) {
  const { sim, daemon, recv, home } = d;
  await sim.waitFor(() => daemon.got.some((m) => m.address === '/stage/ping'), 10000, 'a ping');
  const token = daemon.got.find((m) => m.address === '/stage/ping').args[0].value;
  daemon.reply(recv, '/stage/pong', token);
  await sim.waitFor(() => daemon.got.some((m) => m.address === '/stage/info'), 10000, '/stage/info');
  daemon.reply(recv, '/stage/info', home, d.bounces || path.join(home, 'bounces'));
  await sim.waitFor(() => sim.received.some((m) => m.address === '/stage/info'), 10000, 'the info reply');
}

async function doneJob(d, mode = 1) {
  const { sim, daemon, recv, home } = d;
  sim.click('Context', mode);
  sim.click('Generate');
  await sim.waitFor(() => daemon.got.some((m) => m.address === '/stage/generate'), 10000, '/stage/generate');
  const id = daemon.got.find((m) => m.address === '/stage/generate').args[0].value;
  const take = path.join(home, 'outbox', `${id}.drums.120bpm.take1.wav`);
  require('../sim/objects').writeWav(take, [0.1, -0.1], 1, 44100, 16);
  daemon.reply(recv, '/stage/job/done', id, take);
  await sim.waitFor(() => sim.results.length === 1, 10000, 'the results menu');
  return { id, take };
}

// Live playing, Generate pressed, one bar recorded: the /stage/generate the device then sent (as plain values).
async function recordedGenerate(d) {
  const { sim, daemon } = d;
  sim.play();
  sim.click('Generate');
  sim.advance(20000);
  await sim.waitFor(() => daemon.got.some((m) => m.address === '/stage/generate'), 10000, '/stage/generate');
  return daemon.plain().find((m) => m[0] === '/stage/generate');
}

test('loads in Live: status, track menu (audio tracks only), tempo and ping over UDP, nothing in the Max window', async (t) => {
  const d = await loadDevice(t);
  assert.equal(d.sim.status, 'Looking for the stage-bridge daemon...');
  assert.deepEqual(d.sim.tracks, ['1 Drums', '4 Stem']);
  await d.sim.waitFor(() => d.daemon.got.length >= 2, 10000, 'tempo and ping');
  const [tempo, ping] = d.daemon.got;
  // Live's tempo is a float property; the js outlet sends a whole number as an int
  assert.deepEqual(tempo, { address: '/stage/tempo', args: [{ type: 'i', value: 120 }, { type: 'i', value: 4 }, { type: 'i', value: 4 }] });
  assert.equal(ping.address, '/stage/ping');
  assert.match(ping.args[0].value, /^m4l-[a-z2-9]{4}-1$/);
  assert.deepEqual(d.sim.errors, []);
});

test('a pong lights the LED and the device asks for the daemon\'s status and folders; metro pings every 2 s', async (t) => {
  const d = await loadDevice(t);
  await connect(d);
  assert.equal(d.sim.led, 1);
  assert.equal(d.sim.status, 'Connected. Ready.');
  assert.ok(d.daemon.got.some((m) => m.address === '/stage/status'));
  const pings = () => d.daemon.got.filter((m) => m.address === '/stage/ping').length;
  d.sim.advance(2000);
  await d.sim.waitFor(() => pings() === 2, 10000, 'a second ping');
  d.sim.advance(1999);
  assert.equal(pings(), 2);
});

test('mix+click while playing: recording starts at the next bar line, the WAV has the right length, then /stage/generate', async (t) => {
  const d = await loadDevice(t);
  await connect(d);
  const { sim, daemon } = d;
  sim.click('Bars', 1);                     // live.menu item 1: 2 bars
  sim.type('ui_prompt', 'Genres: Rock.');
  sim.locate(13.25);
  sim.play();
  sim.click('Generate');
  assert.equal(sim.status, 'Recording 2 bars starts at bar 5...');
  assert.equal(sim.box('timepoint').ticks, 16 * 480);
  assert.equal(sim.box('armgate').open, 1);
  // 2.75 beats to the bar line at 120 bpm = 1375 ms
  sim.advance(1374);
  assert.equal(sim.status, 'Recording 2 bars starts at bar 5...');
  sim.advance(1);
  assert.equal(sim.status, 'Recording 2 bars from bar 5...');
  assert.equal(sim.box('armgate').open, 0);
  sim.advance(4250);                        // 2 bars (4 s) + the 250 ms tail
  assert.equal(sim.recorded.length, 1);
  const { file, frames } = sim.recorded[0];
  assert.equal(frames, Math.round(4.25 * 44100));
  assert.ok(isWav(file));
  assert.equal(fs.statSync(file).size, 44 + frames * 2 * 3);     // 2 channels, 24-bit
  assert.equal(daemon.got.filter((m) => m.address === '/stage/generate').length, 0);
  sim.advance(300);                         // the bounce settles, then the job goes out
  await sim.waitFor(() => daemon.got.some((m) => m.address === '/stage/generate'), 10000, '/stage/generate');
  const gen = daemon.plain().find((m) => m[0] === '/stage/generate');
  assert.equal(gen[2], file);
  assert.equal(path.dirname(file), path.join(d.home, 'bounces'));
  assert.deepEqual(gen.slice(3), ['drums', 2, 'bpm', 120, 'beats_per_bar', 4, 'beat_unit', 4, 'offset', 0, 'takes', 1,
    'context_mode', 'mix+click', 'scores', 1, 'prompt', 'Genres: Rock.']);
  assert.deepEqual(sim.errors, []);
});

test('the transport stops before the bar line: nothing is recorded; the next Play arms again', async (t) => {
  const d = await loadDevice(t);
  await connect(d);
  const { sim } = d;
  sim.play();
  sim.click('Generate');
  sim.advance(500);
  sim.stop();
  sim.advance(10000);
  assert.equal(sim.recorded.length, 0);
  sim.play();
  sim.advance(20000);
  assert.equal(sim.recorded.length, 1);
});

for (const splitsSpaces of [false, true]) test(`done -> the takes menu; Insert creates an unwarped clip at the bar, Session in the first empty slot (splitsSpaces=${splitsSpaces})`, async (t) => {
  const d = await loadDevice(t, { splitsSpaces });
  await connect(d);
  const { sim } = d;
  sim.locate(13.25);
  const { take } = await doneJob(d);
  assert.deepEqual(sim.results, [path.basename(take)]);
  sim.click('ui_tracks', 1);                // menu item 2 = Live track 4 "Stem"
  sim.click('Insert clip');
  const clips = sim.live.set.tracks[3].arrangement_clips;
  assert.equal(clips.length, 1);
  assert.equal(clips[0].start_time, 16);
  assert.equal(clips[0].warping, 0);
  assert.equal(sim.hostfs.real(clips[0].file_path), take);
  assert.match(sim.status, /^Inserted .*take1 \(Arrangement view at beat 16, warping off\)\./);
  sim.click('Insert into', 1);
  sim.click('Insert clip');
  assert.equal(sim.live.set.tracks[3].clip_slots[1].has_clip, 1);
  assert.equal(sim.live.set.tracks[3].clip_slots[0].clip.name, 'old');
  assert.match(sim.status, /Session view, scene 2/);
  sim.click('Show file');
  assert.deepEqual(sim.messnamed.pop(), ['max', 'launchbrowser', 'file://' + encodeURI(path.join(d.home, 'outbox'))]);
});

test('Arrangement: a clip that takes the place of one at the same beat counts as inserted', async (t) => {
  const liveSet = defaultLiveSet();
  liveSet.tracks[0].arrangement_clips.push({ file_path: '/old.wav', start_time: 0, warping: 1, name: 'old' });
  const d = await loadDevice(t, { liveSet });
  await connect(d);
  await doneJob(d);
  d.sim.click('Insert clip');
  assert.equal(liveSet.tracks[0].arrangement_clips.length, 1);
  assert.match(d.sim.status, /^Inserted /);
});

test('without Live\'s audio clip API, Insert says so in plain words', async (t) => {
  const d = await loadDevice(t, { audioClipApi: false });
  await connect(d);
  await doneJob(d);
  d.sim.click('Insert clip');
  assert.match(d.sim.status, /^Live did not create the clip from \/Volumes\/Macintosh HD\//);
});

test('track names holding spaces show without Live\'s quotes', async (t) => {
  const liveSet = defaultLiveSet();
  liveSet.tracks[3].name = 'My Track';
  const d = await loadDevice(t, { liveSet });
  assert.deepEqual(d.sim.tracks, ['1 Drums', '4 My Track']);
});

for (const emptyText of ['text', 'nothing']) test(`empty prompt and home fields (an empty textedit outputs ${emptyText}): no prompt, the daemon's bounces folder`, async (t) => {
  const d = await loadDevice(t, { emptyText });
  await connect(d);
  const gen = await recordedGenerate(d);
  assert.equal(path.dirname(gen[2]), path.join(d.home, 'bounces'));
  assert.ok(!gen.includes('prompt'), JSON.stringify(gen));
});

test('Windows: Max paths with forward slashes for the recorder, backslashes for the daemon and Insert works', async (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'sim win '));
  t.after(() => fs.rmSync(root, { recursive: true, force: true }));
  const home = path.join(root, 'C', 'Users', 'Bob', 'AppData', 'Local', 'stage-bridge');
  fs.mkdirSync(path.join(home, 'bounces'), { recursive: true });
  fs.mkdirSync(path.join(home, 'outbox'), { recursive: true });
  const d = await loadDevice(t, { os: 'windows', drives: { C: path.join(root, 'C') },
    devicePath: 'C:/Users/Bob/Documents/Ableton/User Library/STAGE Bridge.amxd' });
  d.home = 'C:\\Users\\Bob\\AppData\\Local\\stage-bridge';
  d.bounces = d.home + '\\bounces';
  await connect(d);
  const { sim, daemon } = d;
  const gen = await recordedGenerate(d);
  assert.match(gen[2], /^C:\\Users\\Bob\\AppData\\Local\\stage-bridge\\bounces\\live-.*\.wav$/);
  assert.equal(sim.recorded[0].file, sim.hostfs.real(gen[2]));
  const take = 'C:\\Users\\Bob\\AppData\\Local\\stage-bridge\\outbox\\x.take1.wav';
  require('../sim/objects').writeWav(sim.hostfs.real(take), [0], 1, 44100, 16);
  daemon.reply(d.recv, '/stage/job/done', gen[1], take);
  await sim.waitFor(() => sim.results.length === 1, 10000, 'the results menu');
  sim.click('Insert clip');
  assert.deepEqual(sim.live.set.tracks[0].arrangement_clips.map((c) => c.file_path), ['C:/Users/Bob/AppData/Local/stage-bridge/outbox/x.take1.wav']);
});

test('daemon errors reach the status line in plain words; Cancel sends /stage/cancel', async (t) => {
  const d = await loadDevice(t);
  await connect(d);
  const { sim, daemon, recv } = d;
  sim.click('Context', 1);
  sim.click('Generate');
  await sim.waitFor(() => daemon.got.some((m) => m.address === '/stage/generate'), 10000, '/stage/generate');
  const id = daemon.got.find((m) => m.address === '/stage/generate').args[0].value;
  sim.click('Cancel');
  await sim.waitFor(() => daemon.got.some((m) => m.address === '/stage/cancel'), 10000, '/stage/cancel');
  assert.deepEqual(daemon.plain().find((m) => m[0] === '/stage/cancel'), ['/stage/cancel', id]);
  daemon.reply(recv, '/stage/job/cancelled', id);
  await sim.waitFor(() => sim.status === 'Cancelled.', 10000, 'Cancelled.');
  sim.click('Generate');
  await sim.waitFor(() => daemon.got.filter((m) => m.address === '/stage/generate').length === 2, 10000, 'a second job');
  const id2 = daemon.got.filter((m) => m.address === '/stage/generate')[1].args[0].value;
  daemon.reply(recv, '/stage/job/error', id2, 'weights_missing', 'Weights for stage-drums are missing');
  await sim.waitFor(() => /model weights are not installed/.test(sim.status), 10000, 'the error text');
});

test('ports typed in the device move udpsend/udpreceive and reach the script', async (t) => {
  const d = await loadDevice(t);
  const other = await standIn();
  t.after(() => other.close());
  const recv2 = await freePort();
  d.sim.click('Send port', other.port);
  d.sim.click('Receive port', recv2);
  assert.equal(d.sim.box('udpsend').port, other.port);
  assert.equal(d.sim.box('udpreceive').port, recv2);
  assert.equal(d.sim.box('script').js.ctx.ctl.options.sendPort, other.port);
  d.sim.advance(2000);
  await d.sim.waitFor(() => other.got.some((m) => m.address === '/stage/ping'), 10000, 'a ping on the new port');
  other.reply(recv2, '/stage/pong', other.got.find((m) => m.address === '/stage/ping').args[0].value);
  await d.sim.waitFor(() => d.sim.led === 1, 10000, 'the LED');
});

test('a message the script does not know is named in the Max window', async (t) => {
  const d = await loadDevice(t);
  d.sim.send('script', 0, 'bogus');
  d.sim.send('script', 0, '/not/ours');
  assert.deepEqual(d.sim.posts, ['STAGE Bridge: unknown message bogus\n']);
});

test('no daemon: the device asks node.script (the real stage_launcher.js) to start one; without the command it says so', async (t) => {
  const d = await loadDevice(t);
  for (let i = 0; i < 8; i++) d.sim.advance(1000);           // pings without an answer for longer than 5 s
  assert.match(d.sim.status, /^Starting the stage-bridge daemon/);
  await d.sim.waitFor(() => /^Could not start stage-bridge/.test(d.sim.status), 20000, 'the launcher\'s answer');
  assert.match(d.sim.status, /set the "stage-bridge command" field/);
});

test('audition: the chosen take plays from its start bar in time with Live, at the dial\'s level, and stops with the transport', async (t) => {
  const d = await loadDevice(t);
  await connect(d);
  const { sim, daemon, recv, home } = d;
  sim.click('Bars', 0);                    // 1 bar
  sim.locate(13.25);
  sim.play();
  sim.click('Generate');
  sim.advance(1375 + 2250 + 300);          // to the bar line (beat 16), 1 bar + tail, settle
  await sim.waitFor(() => daemon.got.some((m) => m.address === '/stage/generate'), 10000, '/stage/generate');
  const id = daemon.got.find((m) => m.address === '/stage/generate').args[0].value;
  const take = path.join(home, 'outbox', `${id}.drums.120bpm.take1.wav`);
  require('../sim/objects').writeWav(take, new Array(2 * 44100).fill(0.1), 1, 44100, 16);   // 2 s = 1 bar
  daemon.reply(recv, '/stage/job/done', id, take);
  await sim.waitFor(() => sim.results.length === 1, 10000, 'the results menu');
  sim.stop();
  sim.locate(12);                          // one bar before the take
  sim.click('Audition level', -6);
  assert.ok(Math.abs(sim.box('level_0').value - 10 ** (-6 / 20)) < 1e-9);
  assert.equal(sim.box('level_1').value, sim.box('level_0').value);
  sim.click('Audition');
  assert.equal(sim.box('player').file, take);
  // the take's start (bar 5 = beat 16), or just after it: the device arms one tick later (see stage_logic.js)
  const ticks = sim.box('audition_timepoint').ticks;
  assert.ok(ticks >= 16 * 480 && ticks <= 16 * 480 + 1, String(ticks));
  assert.match(sim.status, /^Audition armed: .*take1\.wav plays when Live reaches bar 5/);
  sim.play();
  const toStart = (ticks - 12 * 480) * 500 / 480;       // ms from beat 12 at 120 bpm
  sim.advance(Math.floor(toStart));
  assert.equal(sim.box('player').playing, Math.floor(toStart) === toStart);
  sim.advance(1);
  assert.equal(sim.box('player').playing, true);
  assert.ok(sim.box('player').position() < 1.0001, String(sim.box('player').position()));
  assert.match(sim.status, /^Auditioning /);
  sim.advance(499);
  sim.stop();
  assert.equal(sim.box('player').playing, false);
  sim.advance(10);
  assert.doesNotMatch(sim.status, /Auditioning|armed/);
  // playing again from inside the take: Audition starts it at the matching offset at once
  sim.locate(17);
  sim.play();
  sim.click('Audition');
  assert.equal(sim.box('player').playing, true);
  assert.ok(Math.abs(sim.box('player').position() - 500) < 1e-6, String(sim.box('player').position()));
  assert.deepEqual(sim.errors, []);
});

test('the device remembers its texts and takes with the Live set: a reopened set shows them', async (t) => {
  const d = await loadDevice(t);
  await connect(d);
  d.sim.type('ui_prompt', 'Genres: Rock.');
  const { take } = await doneJob(d);
  const saved = d.sim.box('state').value;
  assert.ok(saved && saved.length, 'the pattr holds the state');
  d.sim.close();
  // Live opens the set again: the blob parameter comes back with the device
  const again = new Sim({ os: 'macintosh', devicePath: d.sim.devicePath, parameters: { 'STAGE state': saved,
    'Send port': d.daemon.port, 'Receive port': d.recv } });
  t.after(() => again.close());
  again.start();
  assert.deepEqual(again.results, [path.basename(take)]);
  assert.equal(again.box('ui_prompt').text, 'Genres: Rock.');
});

// Open question (issue 13, D2/D4; sim/live.js [RETURN]): nothing documents what create_audio_clip returns. When
// the call returns no id, the device finds the clip Live made (Arrangement: the track's clip at the anchor that
// plays the take; Session: the slot now has a clip), so it neither reports a failure nor, for a path with spaces,
// makes the clip a second time with the quoted path.
for (const splitsSpaces of [false, true]) test(`if create_audio_clip returns nothing, Insert finds the clip Live made, once (splitsSpaces=${splitsSpaces})`, async (t) => {
  const d = await loadDevice(t, { callReturnsId: false, splitsSpaces });
  await connect(d);
  const { sim } = d;
  sim.locate(13.25);
  const { take } = await doneJob(d);
  sim.click('Insert clip');
  const clips = sim.live.set.tracks[0].arrangement_clips;
  assert.equal(clips.length, 1);
  assert.equal(sim.hostfs.real(clips[0].file_path), take);
  assert.equal(clips[0].warping, 0);
  assert.match(sim.status, /^Inserted .*\(Arrangement view at beat 16, warping off\)\./);
  sim.click('Insert into', 1);
  sim.click('Insert clip');
  const slots = sim.live.set.tracks[0].clip_slots;
  assert.deepEqual(slots.map((x) => x.has_clip), [1, 1, 0]);   // the first empty slot only, not the next one too
  assert.equal(slots[1].clip.warping, 0);
  assert.match(sim.status, /Session view, scene 2/);
});

test('a track added in Live shows in the track menu at once (the device observes live_set tracks)', async (t) => {
  const d = await loadDevice(t);
  d.sim.addTrack({ name: 'New Audio' });
  d.sim.addTrack({ name: 'MIDI', has_audio_input: 0 });
  assert.deepEqual(d.sim.tracks, ['1 Drums', '4 Stem', '5 New Audio']);
});

test('Live\'s loop on: the recording starts at the loop start when Live jumps back there', async (t) => {
  const liveSet = Object.assign(defaultLiveSet(), { loop: 1, loop_start: 0, loop_length: 8 });
  const d = await loadDevice(t, { liveSet });
  await connect(d);
  const { sim } = d;
  sim.click('Bars', 0);                    // 1 bar of a 2-bar loop
  sim.locate(5);
  sim.play();
  sim.click('Generate');
  assert.match(sim.status, /loop start/);
  sim.advance(1500);                       // beat 5 -> 8: the jump back to beat 0
  assert.doesNotMatch(sim.status, /^Recording 1 bars from/);
  sim.advance(2);                          // the clock moves on from the loop start
  assert.match(sim.status, /^Recording 1 bars from bar 1/);
  sim.advance(2250 + 300);
  await sim.waitFor(() => d.daemon.got.some((m) => m.address === '/stage/generate'), 10000, '/stage/generate');
  assert.equal(sim.recorded[0].frames, Math.round(2.25 * 44100));
});

// issue 16: the device asks for scores, and the takes menu says each take's grid fit; Insert still inserts the file
test('done with scores -> the takes menu says "take 1 - grid 0.94"; Insert inserts that take', async (t) => {
  const d = await loadDevice(t);
  await connect(d);
  const { sim, daemon, recv, home } = d;
  sim.locate(13.25);
  sim.click('Context', 1);
  sim.click('Generate');
  await sim.waitFor(() => daemon.got.some((m) => m.address === '/stage/generate'), 10000, '/stage/generate');
  const gen = daemon.got.find((m) => m.address === '/stage/generate').args.map((a) => a.value);
  assert.equal(gen[gen.indexOf('scores') + 1], 1);
  const take = path.join(home, 'outbox', `${gen[0]}.drums.120bpm.take1.wav`);
  require('../sim/objects').writeWav(take, [0.1, -0.1], 1, 44100, 16);
  daemon.reply(recv, '/stage/job/done', gen[0], take, 'take', 1, 'score', 0.9375, 'grid_f1', 0.9375, 'offset_ms', -2.5);
  await sim.waitFor(() => sim.results.length === 1, 10000, 'the results menu');
  assert.deepEqual(sim.results, ['take 1 - grid 0.94']);
  sim.click('ui_tracks', 1);
  sim.click('Insert clip');
  const clips = sim.live.set.tracks[3].arrangement_clips;
  assert.equal(clips.length, 1);
  assert.equal(sim.hostfs.real(clips[0].file_path), take);
  assert.deepEqual(sim.errors, []);
});
