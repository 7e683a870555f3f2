'use strict';
// Tests of src/stage_launcher.js, the Node for Max script that starts `stage-bridge serve`. The script runs
// for real in a child Node process with a stand-in `max-api` module (sim/node_modules_stub, following the
// Node for Max API docs) and fake `stage-bridge` commands (shell scripts); tests/test_m4l_contract.py runs
// it with the real daemon.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const { spawn } = require('node:child_process');

const SCRIPT = path.join(__dirname, '..', 'src', 'stage_launcher.js');
const STUB = path.join(__dirname, '..', 'sim', 'node_modules_stub');
const launcherLib = require(SCRIPT);
const posixOnly = process.platform === 'win32' ? 'fake commands are shell scripts' : false;

function tmpdir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'stage-launcher-'));
}

// An executable shell script at `file` (parents created).
function fakeCommand(file, body) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  return file;
}

// The launcher in its own Node process, as node.script runs it; messages in, outlet/post lines out.
function startLauncher(env = {}) {
  const proc = spawn(process.execPath, [SCRIPT], {
    env: { ...process.env, NODE_PATH: STUB, TMPDIR: env.TMPDIR || os.tmpdir(), ...env },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const lines = [];
  const waiters = [];
  readline.createInterface({ input: proc.stdout }).on('line', (line) => {
    lines.push(JSON.parse(line));
    for (const w of waiters.splice(0)) w();
  });
  return {
    proc,
    lines,
    send(...message) { proc.stdin.write(JSON.stringify(message) + '\n'); },
    outlets() { return lines.filter((l) => l.outlet).map((l) => l.outlet); },
    posts() { return lines.filter((l) => l.post).map((l) => l.post); },
    // Wait until `count` outlet messages arrived (generous timeout: the machine may be busy).
    async outlet(count, timeoutMs = 60000) {
      const deadline = Date.now() + timeoutMs;
      while (this.outlets().length < count) {
        if (Date.now() > deadline) throw new Error(`no outlet #${count}; got ${JSON.stringify(lines)}`);
        await new Promise((resolve) => { waiters.push(resolve); setTimeout(resolve, 200); });
      }
      return this.outlets()[count - 1];
    },
    stop() { proc.kill(); },
  };
}

const enc = (s) => (s ? encodeURIComponent(s) : '-');

test('a checkout next to the device, PATH, then the usual user folders', () => {
  const c = launcherLib.candidates({ platform: 'darwin', home: '/Users/al', env: { PATH: '/usr/bin:/bin' },
    hint: '/Users/al/stage-bridge/max_for_live' });
  assert.equal(c[0], '/Users/al/stage-bridge/.venv/bin/stage-bridge', 'the device file sits in the checkout');
  assert.ok(c.indexOf('/usr/bin/stage-bridge') < c.indexOf('/Users/al/.local/bin/stage-bridge'));
  assert.ok(c.includes('/opt/homebrew/bin/stage-bridge'));
  const w = launcherLib.candidates({ platform: 'win32', home: 'C:\\Users\\Bo', env: { Path: 'C:\\Windows' }, hint: '' });
  assert.ok(w.includes('C:\\Users\\Bo\\stage-bridge\\.venv\\Scripts\\stage-bridge.exe'));
  assert.ok(w.includes('C:\\Users\\Bo\\.local\\bin\\stage-bridge.exe'));
  assert.equal(new Set(c).size, c.length, 'no place twice');
});

test('a given path: the command itself or its stage-bridge folder; anything else says what to set', { skip: posixOnly }, () => {
  const dir = tmpdir();
  const cmd = fakeCommand(path.join(dir, 'my sb', '.venv', 'bin', 'stage-bridge'), 'exit 0');
  const ctx = { platform: process.platform, home: dir, env: { PATH: '' }, hint: '' };
  assert.deepEqual(launcherLib.findCommand({ ...ctx, given: cmd }), { command: cmd });
  assert.deepEqual(launcherLib.findCommand({ ...ctx, given: path.join(dir, 'my sb') }), { command: cmd });
  const wrong = launcherLib.findCommand({ ...ctx, given: path.join(dir, 'nothing') });
  assert.match(wrong.error, /is not the stage-bridge command. Set the "stage-bridge command" field/);
  fs.writeFileSync(path.join(dir, 'plain'), 'x', { mode: 0o644 });
  assert.ok(launcherLib.findCommand({ ...ctx, given: path.join(dir, 'plain') }).error, 'not executable');
  assert.match(launcherLib.findCommand(ctx).error, /^the stage-bridge command was not found/);
});

test('the port-in-use refusal of `stage-bridge serve` and its last error line are recognised', () => {
  const log = 'INFO loading\nerror: cannot listen on 127.0.0.1:9000 (Address already in use): is another stage-bridge running? ...\n';
  assert.equal(launcherLib.portInUse(log), 9000);
  assert.equal(launcherLib.portInUse('error: weights missing'), null);
  assert.equal(launcherLib.reason(launcherLib.lastLines('a\nerror: one\nb\n', 20)), 'error: one');
  assert.equal(launcherLib.reason(['x', 'y']), 'y');
  assert.equal(launcherLib.decodeArg('-'), '');
  assert.equal(launcherLib.decodeArg('a%20b'), 'a b');
});

test('starts the command found in the checkout, detached, on the device\'s ports; never a second one', { skip: posixOnly }, async () => {
  const dir = tmpdir();
  const runs = path.join(dir, 'runs.txt');
  fakeCommand(path.join(dir, 'stage-bridge', '.venv', 'bin', 'stage-bridge'),
    `echo "$@" >> "${runs}"\nexec sleep 60`);
  const l = startLauncher({ HOME: dir, PATH: '/usr/bin:/bin' });
  try {
    l.send('launch', 9100, 9101, '-', enc(path.join(dir, 'stage-bridge', 'max_for_live')));
    const [word, pid] = await l.outlet(1);
    assert.equal(word, 'started');
    assert.ok(pid > 0);
    l.send('launch', 9100, 9101, '-', '-');
    assert.deepEqual(await l.outlet(2), ['started', pid], 'the running one is the answer');
    const deadline = Date.now() + 30000;
    while (!fs.existsSync(runs) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.equal(fs.readFileSync(runs, 'utf8'), 'serve --osc-port 9100 --reply-port 9101\n', 'started once');
    assert.ok(l.posts().some((p) => /started .*stage-bridge serve --osc-port 9100/.test(p)));
    process.kill(pid);
    assert.deepEqual((await l.outlet(3)).slice(0, 2), ['exited', 'SIGTERM']);
  } finally {
    l.stop();
  }
});

test('an early exit reports its code and last error line; the port-in-use refusal reports "already"', { skip: posixOnly }, async () => {
  const dir = tmpdir();
  const failing = fakeCommand(path.join(dir, 'a', 'stage-bridge'), 'echo "loading"\necho "error: the drums model weights are not installed" >&2\nexit 1');
  const busy = fakeCommand(path.join(dir, 'b', 'stage-bridge'),
    'echo "error: cannot listen on 127.0.0.1:$3 (Address already in use): is another stage-bridge running?" >&2\nexit 1');
  const l = startLauncher({ HOME: dir, PATH: '/usr/bin:/bin' });
  try {
    l.send('launch', 9200, 9201, enc(failing), '-');
    assert.equal((await l.outlet(1))[0], 'started');
    assert.deepEqual(await l.outlet(2), ['exited', 1, 'error: the drums model weights are not installed']);
    assert.ok(l.posts().includes('stage-bridge| loading'), 'its last lines go to the Max window');
    l.send('launch', 9200, 9201, enc(busy), '-');
    assert.equal((await l.outlet(3))[0], 'started', 'the first one ended: a new one may start');
    assert.deepEqual(await l.outlet(4), ['already', 9200]);
  } finally {
    l.stop();
  }
});

test('no command anywhere: "failed" with what to do, and nothing started', { skip: posixOnly }, async () => {
  const dir = tmpdir();
  const l = startLauncher({ HOME: dir, PATH: dir });
  try {
    l.send('launch', 9300, 9301, '-', '-');
    const [word, text] = await l.outlet(1);
    assert.equal(word, 'failed');
    assert.match(text, /^the stage-bridge command was not found. .*"stage-bridge command" field/);
    l.send('launch', 9300, 9301, enc(path.join(dir, 'missing file')), '-');
    assert.match((await l.outlet(2))[1], /missing file" is not the stage-bridge command/);
  } finally {
    l.stop();
  }
});
