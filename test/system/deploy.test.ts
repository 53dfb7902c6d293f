// Checks deploy/: promtool validates the Prometheus config, the alert rules and their unit tests;
// the compose, Kubernetes and systemd files are parsed and checked against each other, the
// repository and the metric catalog.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { checkExposure } from '../../src/cli/security-options.js';
import { PIPELINE_MALLOC_ENV, PIPELINE_NODE_FLAGS } from '../../src/cli/pipeline-process.js';
import { onePerLayer, parsePartition } from '../../src/config/partition.js';
import { rangeName } from '../../src/transport/layer-range.js';
import { METRIC_SERIES_NAMES } from '../../src/metrics/catalog.js';
import { ROOT } from '../helpers/spawn.js';

const DEPLOY = join(ROOT, 'deploy');

type Obj = Record<string, unknown>;

function obj(x: unknown, what: string): Obj {
  assert.ok(x !== null && typeof x === 'object' && !Array.isArray(x), `${what}: not a mapping`);
  return x as Obj;
}

function arr(x: unknown, what: string): unknown[] {
  assert.ok(Array.isArray(x), `${what}: not a list`);
  return x;
}

function str(x: unknown, what: string): string {
  assert.equal(typeof x, 'string', `${what}: not a string`);
  return x as string;
}

/** Every document of a YAML file, as plain values; a syntax error fails the test. */
function loadYaml(path: string): unknown[] {
  const docs = parseAllDocuments(readFileSync(path, 'utf8'), { merge: true });
  assert.ok(Array.isArray(docs), `${path}: no YAML documents`);
  return docs.map((d, i) => {
    assert.deepEqual(
      d.errors.map((e) => e.message),
      [],
      `${relative(ROOT, path)} document ${i}: YAML errors`,
    );
    return d.toJS();
  });
}

function loadOne(path: string): Obj {
  const docs = loadYaml(path);
  assert.equal(docs.length, 1, `${path}: expected one YAML document`);
  return obj(docs[0], path);
}

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}

function promtool(...args: string[]): string {
  const r = spawnSync('promtool', args, { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') {
    assert.fail(
      'promtool not found: install the Debian package `prometheus` (apt-get install prometheus)',
    );
  }
  assert.ifError(r.error);
  const out = `${r.stdout}${r.stderr}`;
  assert.equal(r.status, 0, `promtool ${args.join(' ')} exited ${r.status}:\n${out}`);
  return out;
}

/**
 * A process of a deployment that listens beyond its host: the CLI accepts it (it has keys),
 * and its --key and --trust are the files ffx-keys makes, in the directory the keys are at.
 */
function assertKeyed(
  where: string,
  p: { flag: string; endpoint: string; key?: string; trust?: string },
  keys: { dir: string; name: string },
): void {
  assert.doesNotThrow(
    () => checkExposure(p.endpoint, p.flag, { key: p.key, trust: p.trust, insecure: false }),
    where,
  );
  assert.equal(p.key, `${keys.dir}/${keys.name}.key`, `${where}: --key`);
  assert.equal(p.trust, `${keys.dir}/trusted.pub`, `${where}: --trust`);
}

/** The value after `flag` in an argument list. */
function flagValue(args: string[], flag: string): string | undefined {
  const i = args.indexOf(flag);
  return i >= 0 ? args[i + 1] : undefined;
}

// ---------------------------------------------------------------------------------------------
// PromQL: the metric names an expression reads.
// ---------------------------------------------------------------------------------------------

const PROMQL_KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'offset', 'on', 'ignoring']);

function metricNames(expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '') // strings
    .replace(/\{[^}]*\}/g, '') // label matchers
    .replace(/\[[^\]]*\]/g, '') // ranges
    .replace(/\b(on|ignoring|by|without|group_left|group_right)\s*\([^)]*\)/g, '');
  const names: string[] = [];
  for (const m of bare.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)) {
    const after = bare.slice((m.index ?? 0) + m[0].length);
    if (/^\s*\(/.test(after) || PROMQL_KEYWORDS.has(m[0])) continue; // a function, a keyword
    names.push(m[0]);
  }
  return names;
}

function assertKnownMetrics(names: string[], where: string): void {
  for (const name of names) {
    assert.ok(
      name === 'up' || METRIC_SERIES_NAMES.includes(name),
      `${where}: ${name} is not in METRIC_SERIES_NAMES (src/metrics/catalog.ts)`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------------------------

const PROM = join(DEPLOY, 'prometheus');

interface Rule {
  alert: string;
  expr: string;
}

function alertRules(): Rule[] {
  const groups = arr(loadOne(join(PROM, 'alerts.yml')).groups, 'groups');
  return groups.flatMap((g) =>
    arr(obj(g, 'group').rules, 'rules').map((r) => {
      const rule = obj(r, 'rule');
      return { alert: str(rule.alert, 'alert'), expr: str(rule.expr, 'expr') };
    }),
  );
}

describe('deploy/prometheus', () => {
  it('promtool check config passes', () => {
    promtool('check', 'config', 'deploy/prometheus/prometheus.yml');
  });

  it('promtool check rules passes', () => {
    promtool('check', 'rules', 'deploy/prometheus/alerts.yml');
  });

  it('promtool test rules passes', () => {
    const out = promtool('test', 'rules', 'deploy/prometheus/alerts.test.yml');
    assert.match(out, /SUCCESS/);
  });

  it('scrapes the compose services, coordinators and stages apart, and file_sd target lists', () => {
    const config = loadOne(join(PROM, 'prometheus.yml'));
    assert.equal(obj(config.global, 'global').scrape_interval, '5s');
    assert.deepEqual(config.rule_files, ['alerts.yml']);
    const jobs = new Map(
      arr(config.scrape_configs, 'scrape_configs').map((j) => {
        const job = obj(j, 'scrape config');
        return [str(job.job_name, 'job_name'), job] as const;
      }),
    );
    const staticTargets = (name: string) =>
      arr(obj(jobs.get(name), `job ${name}`).static_configs, 'static_configs').flatMap((c) => {
        const group = obj(c, 'static_config');
        assert.equal(obj(group.labels, `${name} labels`).ffx_cluster, 'compose');
        return arr(group.targets, 'targets').map(String);
      });
    assert.deepEqual(staticTargets('ffx-coordinator'), ['coordinator:9464']);
    assert.deepEqual(staticTargets('ffx-stage'), ['stage-1:9465', 'stage-2:9466']);
    assert.deepEqual(composeMetricsTargets(), [
      ...staticTargets('ffx-coordinator'),
      ...staticTargets('ffx-stage'),
    ]);

    // file_sd: nothing ships (a placeholder target would be a stage down from the start), the
    // examples are in the format Prometheus reads.
    for (const [name, dir] of [
      ['ffx-coordinator-file-sd', 'coordinators'],
      ['ffx-stage-file-sd', 'stages'],
    ] as const) {
      const fileSd = arr(obj(jobs.get(name), `job ${name}`).file_sd_configs, 'file_sd');
      assert.deepEqual(obj(fileSd[0], 'file_sd_config').files, [`targets/${dir}/*.json`]);
      assert.ok(!existsSync(join(PROM, 'targets', dir)), `targets/${dir}/ ships targets`);
      const example = join(PROM, 'targets', `${dir}.json.example`);
      for (const g of arr(JSON.parse(readFileSync(example, 'utf8')), example)) {
        const group = obj(g, example);
        for (const t of arr(group.targets, `${example} targets`)) {
          assert.match(str(t, 'target'), /^[\w.-]+:\d+$/, `${example}: target ${String(t)}`);
        }
        for (const [k, v] of Object.entries(obj(group.labels ?? {}, `${example} labels`))) {
          assert.match(k, /^[a-zA-Z_][a-zA-Z0-9_]*$/);
          str(v, `${example} label ${k}`);
        }
      }
    }
  });

  it('has an alert for each section of docs/runbook.md, each with severity, summary, description and its runbook_url', () => {
    const doc = loadOne(join(PROM, 'alerts.yml'));
    const names = alertRules().map((r) => r.alert);
    const runbook = readFileSync(join(ROOT, 'docs', 'runbook.md'), 'utf8');
    const sections = [...runbook.matchAll(/^## (\S+)$/gm)].map((m) => m[1]);
    assert.deepEqual([...names].sort(), [...sections].sort(), 'alerts vs runbook sections');
    const deployReadme = readFileSync(join(ROOT, 'deploy', 'README.md'), 'utf8');
    for (const name of names) assert.ok(deployReadme.includes(name), `deploy/README.md: ${name}?`);
    for (const g of arr(doc.groups, 'groups')) {
      for (const r of arr(obj(g, 'group').rules, 'rules')) {
        const rule = obj(r, 'rule');
        const alert = str(rule.alert, 'alert');
        const labels = obj(rule.labels, `${alert} labels`);
        assert.match(str(labels.severity, 'severity'), /^(critical|warning|info)$/);
        const annotations = obj(rule.annotations, `${alert} annotations`);
        str(annotations.summary, `${alert} summary`);
        str(annotations.description, `${alert} description`);
        // GitHub's anchor of "## FfxStageDown" is #ffxstagedown.
        assert.equal(
          str(annotations.runbook_url, `${alert} runbook_url`),
          `{{ or $externalLabels.ffx_runbook "docs/runbook.md" }}#${alert.toLowerCase()}`,
        );
      }
    }
  });

  it('reads only metrics that ffx exports (or up)', () => {
    for (const rule of alertRules()) assertKnownMetrics(metricNames(rule.expr), rule.alert);
    const tests = loadOne(join(PROM, 'alerts.test.yml'));
    for (const t of arr(tests.tests, 'tests')) {
      for (const s of arr(obj(t, 'test').input_series, 'input_series')) {
        const series = str(obj(s, 'input series').series, 'series');
        assertKnownMetrics([series.replace(/\{.*$/s, '').trim()], `alerts.test.yml ${series}`);
      }
    }
    assert.deepEqual(metricNames('time() - a_b{x="y"} > 1 and on() (rate(c[5m]) < 1)'), [
      'a_b',
      'c',
    ]);
  });

  it('unit-tests every alert firing, and some not firing', () => {
    const tests = loadOne(join(PROM, 'alerts.test.yml'));
    const fired = new Set<string>();
    let quiet = 0;
    for (const t of arr(tests.tests, 'tests')) {
      for (const c of arr(obj(t, 'test').alert_rule_test, 'alert_rule_test')) {
        const ruleTest = obj(c, 'alert_rule_test');
        const exp = arr(ruleTest.exp_alerts ?? [], 'exp_alerts');
        if (exp.length > 0) fired.add(str(ruleTest.alertname, 'alertname'));
        else quiet++;
      }
    }
    for (const rule of alertRules()) {
      assert.ok(fired.has(rule.alert), `alerts.test.yml never expects ${rule.alert} to fire`);
    }
    assert.ok(quiet > 0, 'alerts.test.yml has no case where an alert must not fire');
  });
});

// ---------------------------------------------------------------------------------------------
// Every YAML file parses
// ---------------------------------------------------------------------------------------------

describe('deploy/ YAML', () => {
  it('every .yml/.yaml file under deploy/ parses', () => {
    const files = walk(DEPLOY).filter((f) => /\.ya?ml$/.test(f));
    assert.ok(files.length >= 8, `only ${files.length} YAML files under deploy/`);
    for (const f of files) assert.ok(loadYaml(f).length > 0, `${f}: empty`);
  });
});

// ---------------------------------------------------------------------------------------------
// Docker
// ---------------------------------------------------------------------------------------------

const DOCKER = join(DEPLOY, 'docker');

function composeServices(file: string): Map<string, Obj> {
  const doc = loadOne(join(DOCKER, file));
  return new Map(
    Object.entries(obj(doc.services, `${file} services`)).map(([k, v]) => [k, obj(v, k)]),
  );
}

function env(service: Obj, name: string): Obj {
  return obj(service.environment ?? {}, `${name} environment`);
}

/** host:port of every ffx /metrics endpoint in compose.yaml, sorted. */
function composeMetricsTargets(): string[] {
  const targets: string[] = [];
  for (const [name, s] of composeServices('compose.yaml')) {
    const port = env(s, name).FFX_METRICS_PORT;
    if (port !== undefined) targets.push(`${name}:${String(port)}`);
    const command = Array.isArray(s.command) ? s.command.map(String) : [];
    const i = command.indexOf('--metrics-port');
    if (i >= 0) targets.push(`${name}:${command[i + 1]}`);
  }
  return targets.sort();
}

describe('deploy/docker', () => {
  it('build-and-push.sh builds both images with two tags each and pushes them', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ffx-docker-'));
    try {
      // A docker that writes down what it is asked.
      const log = join(dir, 'calls');
      writeFileSync(join(dir, 'docker'), `#!/bin/sh\necho "$*" >> '${log}'\n`, { mode: 0o755 });
      const script = join(DOCKER, 'build-and-push.sh');
      const run = (...args: string[]) => {
        rmSync(log, { force: true });
        const r = spawnSync(script, args, {
          cwd: tmpdir(), // it finds the repository itself
          encoding: 'utf8',
          env: { ...process.env, PATH: `${dir}:${process.env.PATH}` },
        });
        return { ...r, calls: existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n') : [] };
      };
      const all = run('reg.example/ffx', '--tag', '1.2.3');
      assert.equal(all.status, 0, all.stderr);
      const build = (kind: string) =>
        `build -f deploy/docker/Dockerfile.${kind} --label org.opencontainers.image.version=1.2.3 ` +
        `-t reg.example/ffx:${kind}-1.2.3 -t reg.example/ffx:${kind} .`;
      assert.deepEqual(all.calls, [
        build('cpu'),
        'push reg.example/ffx:cpu-1.2.3',
        'push reg.example/ffx:cpu',
        build('gpu'),
        'push reg.example/ffx:gpu-1.2.3',
        'push reg.example/ffx:gpu',
      ]);
      // The overlays' image names are what it pushes.
      const overlay = readFileSync(
        join(DEPLOY, 'k8s', 'overlays', 'fashion-mnist-gpu', 'kustomization.yaml'),
        'utf8',
      );
      assert.match(overlay, /newTag: gpu/);
      const gpuOnly = run('reg.example/ffx', '--only', 'gpu', '--no-push');
      assert.equal(gpuOnly.status, 0, gpuOnly.stderr);
      assert.equal(gpuOnly.calls.length, 1);
      assert.match(
        gpuOnly.calls[0]!,
        /^build -f deploy\/docker\/Dockerfile\.gpu .* -t reg\.example\/ffx:gpu-\d+\.\d+\.\d+-[0-9a-f]{7,}(-dirty)? /,
      );
      const bad = run('reg.example/ffx', '--only', 'tpu');
      assert.equal(bad.status, 2);
      assert.match(bad.stderr, /--only takes cpu or gpu, got tpu/);
      assert.deepEqual(bad.calls, []);
      assert.equal(run().status, 2, 'no repository');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('publishes ports on 127.0.0.1 unless told, and Grafana asks for a login', () => {
    for (const file of ['compose.yaml', 'compose.gpu.yaml']) {
      for (const [name, s] of composeServices(file)) {
        for (const p of s.ports === undefined ? [] : arr(s.ports, `${name} ports`)) {
          // compose's short syntax: [HOST_IP:]HOST_PORT:CONTAINER_PORT
          assert.match(str(p, `${name} port`), /^\$\{FFX_PUBLISH_HOST:-127\.0\.0\.1\}:\d+:\d+$/);
        }
      }
    }
    const grafana = obj(composeServices('compose.yaml').get('grafana'), 'grafana');
    const env = obj(grafana.environment, 'grafana environment');
    assert.equal(env.GF_AUTH_ANONYMOUS_ENABLED, 'false');
    // No default password: `up` fails until one is given.
    assert.match(str(env.GF_SECURITY_ADMIN_PASSWORD, 'password'), /^\$\{GRAFANA_ADMIN_PASSWORD:\?/);
  });

  it('every service has an image or a build whose context and Dockerfile exist', () => {
    for (const file of ['compose.yaml', 'compose.gpu.yaml']) {
      for (const [name, s] of composeServices(file)) {
        assert.ok(s.image !== undefined || s.build !== undefined, `${file} ${name}: no image`);
        if (s.image !== undefined) assert.match(str(s.image, `${name} image`), /^[\w./:-]+$/);
        if (s.build === undefined) continue;
        const build = obj(s.build, `${name} build`);
        const context = resolve(DOCKER, str(build.context, `${name} build.context`));
        assert.equal(context, resolve(ROOT), `${file} ${name}: build context is not the repo root`);
        const dockerfile = join(context, str(build.dockerfile, `${name} build.dockerfile`));
        assert.ok(existsSync(dockerfile), `${file} ${name}: ${dockerfile} does not exist`);
      }
    }
  });

  it('runs the coordinator and stage N with metrics on 9464 + N', () => {
    const services = composeServices('compose.yaml');
    for (const name of ['coordinator', 'stage-1', 'stage-2', 'prometheus', 'grafana']) {
      assert.ok(services.has(name), `compose.yaml lacks service ${name}`);
    }
    const coordinator = obj(services.get('coordinator'), 'coordinator');
    // The image's stage entrypoint swapped for the coordinator, with the same node options.
    assert.deepEqual(arr(coordinator.entrypoint, 'coordinator entrypoint').map(String), [
      'node',
      ...PIPELINE_NODE_FLAGS,
      'dist/src/cli/ffx-coordinator.js',
    ]);
    const command = arr(coordinator.command, 'coordinator command').map(String);
    assert.equal(command[0], 'train');
    assert.ok(command.includes('tcp://0.0.0.0:5555'));
    const config = command[command.indexOf('--config') + 1] ?? '';
    assert.ok(existsSync(join(ROOT, config.replace(/^\/app\//, ''))), `no ${config} in the repo`);
    for (const n of [1, 2]) {
      const name = `stage-${n}`;
      const e = env(obj(services.get(name), name), name);
      assert.equal(String(e.FFX_LAYER), String(n));
      assert.equal(e.FFX_COORDINATOR, 'tcp://coordinator:5555');
      assert.equal(e.FFX_LISTEN, 'tcp://0.0.0.0:6000');
      assert.equal(e.FFX_ADVERTISE, `tcp://${name}:6000`);
      assert.equal(Number(e.FFX_METRICS_PORT), 9464 + n);
    }
  });

  it('encrypts every connection with keys the keys service makes, once', () => {
    const services = composeServices('compose.yaml');
    const keys = obj(services.get('keys'), 'keys');
    const made = arr(keys.command, 'keys command').map(String).join(' ');
    const stages = [...services.keys()].filter((n) => /^stage-\d+$/.test(n));
    assert.match(
      made,
      new RegExp(
        `^test -f /keys/trusted.pub \\|\\| .*ffx-keys\\.js /keys --stages ${stages.length}$`,
      ),
    );
    assert.ok(arr(keys.volumes, 'keys volumes').includes('keys:/keys'));
    const keysFirst = (name: string) => {
      const s = obj(services.get(name), name);
      assert.ok(arr(s.volumes, `${name} volumes`).includes('keys:/keys:ro'), `${name}: no keys`);
      const after = obj(obj(s.depends_on, `${name} depends_on`).keys, `${name} after keys`);
      assert.equal(after.condition, 'service_completed_successfully');
      return s;
    };
    const coordinator = arr(keysFirst('coordinator').command, 'command').map(String);
    assertKeyed(
      'coordinator',
      {
        flag: '--bind',
        endpoint: flagValue(coordinator, '--bind')!,
        key: flagValue(coordinator, '--key'),
        trust: flagValue(coordinator, '--trust'),
      },
      { dir: '/keys', name: 'coordinator' },
    );
    // Prometheus scrapes it from its own container.
    assert.equal(flagValue(coordinator, '--metrics-host'), '0.0.0.0');
    for (const name of stages) {
      const e = env(keysFirst(name), name);
      assertKeyed(
        name,
        {
          flag: '--listen',
          endpoint: String(e.FFX_LISTEN),
          key: e.FFX_KEY as string,
          trust: e.FFX_TRUST as string,
        },
        { dir: '/keys', name: `stage-${String(e.FFX_LAYER)}` },
      );
      assert.equal(e.FFX_METRICS_HOST, '0.0.0.0');
    }
  });

  it('mounts the Prometheus config and the Grafana provisioning from the repo', () => {
    const services = composeServices('compose.yaml');
    const mounts = (name: string) =>
      arr(obj(services.get(name), name).volumes, `${name} volumes`).map((v) => {
        const [src = '', dst = ''] = str(v, 'volume').split(':');
        return { src: src.startsWith('.') ? resolve(DOCKER, src) : src, dst };
      });
    const prom = mounts('prometheus').find((m) => m.dst === '/etc/prometheus');
    assert.equal(prom?.src, PROM);
    const grafana = mounts('grafana');
    assert.equal(
      grafana.find((m) => m.dst === '/etc/grafana/provisioning')?.src,
      join(ROOT, 'grafana', 'provisioning'),
    );
    assert.equal(
      grafana.find((m) => m.dst === '/var/lib/grafana/dashboards')?.src,
      join(ROOT, 'grafana', 'dashboards'),
    );
    // What Grafana is given exists: the datasource, the dashboard provider, the dashboard.
    for (const f of [
      'provisioning/datasources/prometheus.yaml',
      'provisioning/dashboards/ffx.yaml',
      'dashboards/ffx.json',
    ]) {
      assert.ok(existsSync(join(ROOT, 'grafana', f)), f);
    }
  });

  it('gives each GPU stage an NVIDIA GPU in compose.gpu.yaml', () => {
    for (const [name, s] of composeServices('compose.gpu.yaml')) {
      const resources = obj(obj(s.deploy, `${name} deploy`).resources, `${name} resources`);
      const devices = arr(obj(resources.reservations, 'reservations').devices, 'devices');
      const device = obj(devices[0], `${name} device`);
      assert.equal(device.driver, 'nvidia');
      assert.deepEqual(device.capabilities, ['gpu']);
    }
  });

  it('Dockerfiles use the expected bases and start a stage', () => {
    const cpu = readFileSync(join(DOCKER, 'Dockerfile.cpu'), 'utf8');
    const gpu = readFileSync(join(DOCKER, 'Dockerfile.gpu'), 'utf8');
    assert.match(cpu, /^FROM node:20-bookworm-slim\b/m);
    assert.match(gpu, /^FROM nvidia\/cuda:11\.2\.2-cudnn8-runtime-ubuntu20\.04$/m);
    assert.match(gpu, /FFX_BACKEND=tensorflow/);
    for (const [name, text] of [
      ['Dockerfile.cpu', cpu],
      ['Dockerfile.gpu', gpu],
    ] as const) {
      assert.match(text, /^RUN npm ci\b/m, `${name}: no npm ci`);
      // Not root: the last USER is a named user of uid 1000, which the k8s fsGroup matches,
      // and it owns where the keys and runs volumes mount.
      const user = [...text.matchAll(/^USER (\S+)$/gm)].at(-1)?.[1];
      assert.ok(user && user !== 'root' && user !== '0', `${name}: runs as ${user ?? 'root'}`);
      assert.match(text, new RegExp(`install -d -o ${user} -g ${user} -m 0700 /keys`), name);
      assert.match(text, new RegExp(`install -d -o ${user} -g ${user} /app/runs`), name);
      // The settings ffx-launch gives its processes (src/cli/pipeline-process.ts).
      const entry = ['node', ...PIPELINE_NODE_FLAGS, 'dist/src/cli/ffx-stage.js'];
      assert.ok(
        text.includes(`\nENTRYPOINT ${JSON.stringify(entry).replaceAll(',', ', ')}\n`),
        name,
      );
      for (const [k, v] of Object.entries(PIPELINE_MALLOC_ENV)) {
        assert.match(text, new RegExp(`^(ENV |  )${k}=${v}\\b`, 'm'), `${name}: ${k}`);
      }
      for (const m of text.matchAll(/^COPY (?!--from)(.+) \S+$/gm)) {
        for (const src of (m[1] ?? '').split(/\s+/)) {
          assert.ok(existsSync(join(ROOT, src)), `${name}: COPY ${src}: not in the repo`);
        }
      }
    }
    assert.ok(existsSync(join(ROOT, 'src', 'cli', 'ffx-stage.ts')));
  });
});

// ---------------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------------

/** `kubectl kustomize DIR`: the manifests a Kustomize directory renders. */
function kustomize(dir: string): Obj[] {
  const r = spawnSync('kubectl', ['kustomize', dir], { encoding: 'utf8', timeout: 60_000 });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') {
    assert.fail('kubectl not found: deploy/k8s is rendered with its built-in kustomize');
  }
  assert.equal(r.status, 0, `kubectl kustomize ${relative(ROOT, dir)}:\n${r.stderr}`);
  return parseAllDocuments(r.stdout)
    .map((d) => d.toJS() as unknown)
    .filter((d) => d != null)
    .map((d) => obj(d, 'manifest'));
}

describe('deploy/k8s: the Kustomize base and every overlay render as a working cluster', () => {
  const K8S = join(DEPLOY, 'k8s');
  const overlays = readdirSync(join(K8S, 'overlays')).map((d) => `overlays/${d}`);
  const configs = readdirSync(join(ROOT, 'config'))
    .filter((f) => f.endsWith('.json'))
    .map((f) => JSON.parse(readFileSync(join(ROOT, 'config', f), 'utf8')) as Obj);

  it('has the base and at least a CPU and a GPU overlay', () => {
    assert.ok(overlays.includes('overlays/cpu') && overlays.includes('overlays/fashion-mnist-gpu'));
  });

  for (const layout of ['base', ...overlays]) {
    it(`${layout}: one stage per layer of a shipped config, keyed, non-root, runs kept`, () => {
      const docs = kustomize(join(K8S, layout));
      const find = (kind: string, name: string): Obj =>
        obj(
          docs.find((x) => x.kind === kind && obj(x.metadata, 'metadata').name === name),
          `${kind}/${name}`,
        );
      for (const d of docs) {
        str(d.apiVersion, 'apiVersion');
        const kind = str(d.kind, 'kind');
        const metadata = obj(d.metadata, `${kind} metadata`);
        assert.match(str(metadata.name, `${kind} name`), /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
        assert.equal(metadata.namespace, undefined, `${kind}/${String(metadata.name)}: namespace`);
      }

      // The config: a shipped one, as it is; as many stages as it has layers.
      const data = obj(find('ConfigMap', 'ffx-config').data, 'ConfigMap data');
      const config = JSON.parse(str(data['config.json'], 'config.json')) as Obj;
      const shipped = configs.find((c) => c.name === config.name);
      assert.deepEqual(config, shipped, `config.json is config/${String(config.name)}.json`);
      const layers = arr(obj(config.model, 'model').layers, 'layers');
      const set = obj(find('StatefulSet', 'ffx-stage').spec, 'StatefulSet spec');
      // A pod a layer, or a pod a group of PARTITION's.
      const podSpec0 = obj(obj(set.template, 'template').spec, 'pod spec');
      const env0 = arr(obj(arr(podSpec0.containers, 'containers')[0], 'container').env, 'env');
      const partitionValue = String(
        obj(
          env0.find((e) => obj(e, 'env').name === 'PARTITION'),
          'the PARTITION env',
        ).value ?? '',
      );
      const stages =
        partitionValue === ''
          ? onePerLayer(layers.length - 1)
          : parsePartition(partitionValue, layers.length - 1);
      const processes = stages.flatMap((st) =>
        Array.from({ length: st.replicas }, (_, r) => ({
          name: rangeName(st.layers),
          replica: st.replicas > 1 ? `${r + 1}/${st.replicas}` : '',
        })),
      );
      assert.equal(set.replicas, processes.length, 'replicas != number of stage processes');

      // Stages: a headless Service, the layer from the ordinal, metrics, keys.
      const service = obj(find('Service', 'ffx-stage').spec, 'Service spec');
      assert.equal(service.clusterIP, 'None');
      assert.equal(set.serviceName, 'ffx-stage');
      const template = obj(set.template, 'template');
      const labels = obj(obj(template.metadata, 'template metadata').labels, 'labels');
      for (const [k, v] of Object.entries(obj(service.selector, 'selector'))) {
        assert.equal(labels[k], v, `the headless Service does not select the stage pods (${k})`);
      }
      const annotations = obj(obj(template.metadata, 'metadata').annotations, 'annotations');
      assert.equal(annotations['prometheus.io/scrape'], 'true');
      const podSpec = obj(template.spec, 'pod spec');
      const security = obj(podSpec.securityContext, 'stage securityContext');
      assert.equal(security.runAsNonRoot, true);
      assert.equal(security.fsGroup, 1000);
      const container = obj(arr(podSpec.containers, 'containers')[0], 'container');
      const command = arr(container.command, 'command').map(String).join(' ');
      assert.match(command, /FFX_LAYER=\$\(\( \$\{HOSTNAME##\*-\} \+ 1 \)\)/);
      assert.ok(
        command.includes(`exec node ${PIPELINE_NODE_FLAGS.join(' ')} dist/src/cli/ffx-stage.js`),
      );
      // The command itself, run by sh for each pod: its layers and its key, stage by stage.
      const script = arr(container.command, 'command').map(String)[2]!;
      const podOf = (k: number, partition: string) =>
        execFileSync(
          'sh',
          ['-c', script.replace(/exec node .*$/, 'echo "$FFX_LAYER $FFX_KEY $FFX_REPLICA"')],
          { env: { PATH: process.env.PATH, HOSTNAME: `ffx-stage-${k}`, PARTITION: partition } },
        )
          .toString()
          .trim();
      for (const [k, { name, replica }] of processes.entries()) {
        const want = `${name} /etc/ffx-keys/stage-${name}.key ${replica}`.trim();
        assert.equal(podOf(k, partitionValue), want, `pod ffx-stage-${k}`);
      }
      // And a layout with replicas, as the same command reads it.
      assert.deepEqual(
        [0, 1, 2, 3].map((k) => podOf(k, '1,2-3x2,4')),
        [
          '1 /etc/ffx-keys/stage-1.key',
          '2-3 /etc/ffx-keys/stage-2-3.key 1/2',
          '2-3 /etc/ffx-keys/stage-2-3.key 2/2',
          '4 /etc/ffx-keys/stage-4.key',
        ],
      );
      const envs = new Map(
        arr(container.env, 'env').map((e) => {
          const x = obj(e, 'env');
          return [str(x.name, 'env name'), x] as const;
        }),
      );
      assert.match(String(envs.get('FFX_ADVERTISE')?.value), /^tcp:\/\/\$\(\w+\)\.ffx-stage:\d+$/);
      assert.equal(envs.get('FFX_COORDINATOR')?.value, 'tcp://ffx-coordinator:5555');
      const ports = arr(container.ports, 'ports').map((p) => obj(p, 'port'));
      const metrics = ports.find((p) => p.name === 'metrics');
      assert.equal(String(metrics?.containerPort), annotations['prometheus.io/port']);
      assert.equal(String(metrics?.containerPort), envs.get('FFX_METRICS_PORT')?.value);
      // A GPU each, on the GPU image and backend; or none, and a CPU backend.
      const gpu = obj(obj(container.resources, 'resources').limits, 'limits')['nvidia.com/gpu'];
      const image = str(container.image, 'stage image');
      if (image.endsWith(':gpu')) {
        assert.equal(Number(gpu), 1);
        assert.equal(envs.get('FFX_BACKEND')?.value, 'tensorflow');
      } else {
        assert.equal(gpu, undefined, `${image}: a GPU for the CPU image`);
        assert.notEqual(envs.get('FFX_BACKEND')?.value, 'tensorflow');
        assert.equal(envs.get('FFX_DEVICE'), undefined);
      }
      assert.match(command, /export FFX_KEY=\/etc\/ffx-keys\/stage-\$FFX_LAYER\.key;/);
      const mount = arr(container.volumeMounts, 'volumeMounts')
        .map((m) => obj(m, 'mount'))
        .find((m) => m.mountPath === '/etc/ffx-keys');
      const secret = obj(
        arr(podSpec.volumes, 'volumes')
          .map((v) => obj(v, 'volume'))
          .find((v) => v.name === mount?.name)?.secret,
        'the keys volume',
      );
      assert.equal(secret.secretName, 'ffx-keys');
      assert.equal(secret.defaultMode, 0o400);
      assertKeyed(
        'stage',
        {
          flag: '--listen',
          endpoint: String(envs.get('FFX_LISTEN')?.value),
          key: `/etc/ffx-keys/stage-${rangeName(stages[0]!.layers)}.key`, // the first pod's
          trust: envs.get('FFX_TRUST')?.value as string,
        },
        { dir: '/etc/ffx-keys', name: `stage-${rangeName(stages[0]!.layers)}` },
      );

      // The coordinator: its Service's port, the config, its own keys, the runs volume.
      const coordinator = obj(find('Service', 'ffx-coordinator').spec, 'Service spec');
      const servicePorts = arr(coordinator.ports, 'ports').map((p) => Number(obj(p, 'port').port));
      assert.ok(servicePorts.includes(5555));
      const job = obj(find('Job', 'ffx-coordinator').spec, 'Job spec');
      const jobPod = obj(obj(job.template, 'template').spec, 'pod spec');
      const c = obj(arr(jobPod.containers, 'containers')[0], 'container');
      const args = arr(c.command, 'command').map(String);
      assert.deepEqual(args.slice(0, 3 + PIPELINE_NODE_FLAGS.length), [
        'node',
        ...PIPELINE_NODE_FLAGS,
        'dist/src/cli/ffx-coordinator.js',
        'train',
      ]);
      assert.ok(args.includes('tcp://0.0.0.0:5555'));
      assert.equal(flagValue(args, '--resume'), 'latest');
      const volumes = arr(jobPod.volumes, 'volumes').map((v) => obj(v, 'volume'));
      assert.ok(volumes.some((v) => obj(v.configMap ?? {}, 'configMap').name === 'ffx-config'));
      assertKeyed(
        'coordinator',
        {
          flag: '--bind',
          endpoint: flagValue(args, '--bind')!,
          key: flagValue(args, '--key'),
          trust: flagValue(args, '--trust'),
        },
        { dir: '/etc/ffx-keys', name: 'coordinator' },
      );
      const keys = obj(volumes.find((v) => v.secret !== undefined)?.secret, 'keys Secret');
      assert.equal(keys.secretName, 'ffx-keys');
      assert.deepEqual(
        arr(keys.items, 'items').map((i) => obj(i, 'item').path),
        ['coordinator.key', 'trusted.pub'],
      );
      assert.equal(obj(jobPod.securityContext, 'securityContext').fsGroup, 1000);
      assert.equal(flagValue(args, '--metrics-host'), '0.0.0.0');
      const cEnv = new Map(
        arr(c.env, 'env').map((e) => [str(obj(e, 'env').name, 'env name'), obj(e, 'env')]),
      );
      const mounts = arr(c.volumeMounts, 'volumeMounts').map((m) => obj(m, 'mount'));
      const mountOf = (path: string) => {
        const m = mounts.find((x) => x.mountPath === path);
        return volumes.find((v) => v.name === m?.name);
      };
      // The run's directory is on the runs claim, which the layout makes.
      assert.match(String(cEnv.get('FFX_OUT')?.value), /^\/app\/runs\/[\w.-]+$/);
      const runs = obj(mountOf('/app/runs')?.persistentVolumeClaim, 'the runs volume');
      find('PersistentVolumeClaim', str(runs.claimName, 'claimName'));
      // A dataset the image does not hold comes from a volume at --data-dir.
      if (obj(config.data, 'data').dataset !== 'fashion-mnist-sample') {
        const dataDir = String(cEnv.get('FFX_DATA_DIR')?.value);
        const claim = obj(mountOf(dataDir)?.persistentVolumeClaim, 'the datasets volume');
        find('PersistentVolumeClaim', str(claim.claimName, 'claimName'));
      }
      const monitor = docs.find((d) => d.kind === 'ServiceMonitor');
      if (monitor) assert.equal(monitor.apiVersion, 'monitoring.coreos.com/v1');
    });
  }
});

// ---------------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------------

/** A strict parse of a unit file: [Section] headers and Key=Value lines only. */
function parseUnit(path: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | undefined;
  readFileSync(path, 'utf8')
    .split('\n')
    .forEach((raw, i) => {
      const line = raw.trim();
      if (line === '' || line.startsWith('#') || line.startsWith(';')) return;
      const header = /^\[([A-Za-z]+)\]$/.exec(line);
      if (header) {
        assert.ok(!sections.has(header[1] ?? ''), `${path}:${i + 1}: duplicate section`);
        current = new Map();
        sections.set(header[1] ?? '', current);
        return;
      }
      const kv = /^([A-Za-z][A-Za-z0-9]*)=(.*)$/.exec(line);
      assert.ok(kv && current, `${path}:${i + 1}: not a Key=Value line in a section: ${raw}`);
      const [, key = '', value = ''] = kv;
      current.set(key, [...(current.get(key) ?? []), value]);
    });
  return sections;
}

describe('deploy/systemd', () => {
  const SYSTEMD = join(DEPLOY, 'systemd');

  for (const [file, cli] of [
    ['ffx-stage@.service', 'ffx-stage'],
    ['ffx-coordinator.service', 'ffx-coordinator'],
  ] as const) {
    it(`${file} is a well-formed unit that starts ${cli}`, () => {
      const unit = parseUnit(join(SYSTEMD, file));
      assert.deepEqual([...unit.keys()], ['Unit', 'Service', 'Install']);
      const service = unit.get('Service') ?? new Map<string, string[]>();
      const exec = service.get('ExecStart') ?? [];
      assert.equal(exec.length, 1, 'one ExecStart');
      assert.match(
        exec[0] ?? '',
        new RegExp(
          `^/usr/bin/env node ${PIPELINE_NODE_FLAGS.join(' ')} /opt/ffx/dist/src/cli/${cli}\\.js`,
        ),
      );
      assert.ok(existsSync(join(ROOT, 'src', 'cli', `${cli}.ts`)));
      assert.deepEqual(service.get('Restart'), ['on-failure']);
      const environment = service.get('Environment') ?? [];
      for (const [k, v] of Object.entries(PIPELINE_MALLOC_ENV)) {
        assert.ok(environment.includes(`${k}=${v}`), `${file}: ${k}`);
      }
      assert.ok(unit.get('Install')?.get('WantedBy')?.includes('multi-user.target'));
    });
  }

  it('ffx-stage@.service takes the layer from the instance and stage.env', () => {
    const service = parseUnit(join(SYSTEMD, 'ffx-stage@.service')).get('Service');
    assert.deepEqual(service?.get('EnvironmentFile'), ['/etc/ffx/stage.env']);
    assert.ok(service?.get('Environment')?.includes('FFX_LAYER=%i'));
  });

  it('both units listen beyond the host with keys, from /etc/ffx/keys', () => {
    const settings = (file: string) =>
      new Map(
        (parseUnit(join(SYSTEMD, file)).get('Service')?.get('Environment') ?? []).map(
          (e) => e.split('=', 2) as [string, string],
        ),
      );
    const stage = settings('ffx-stage@.service');
    const stageEnv = new Map(
      readFileSync(join(SYSTEMD, 'stage.env.example'), 'utf8')
        .split('\n')
        .filter((l) => /^FFX_/.test(l))
        .map((l) => l.split('=', 2) as [string, string]),
    );
    assertKeyed(
      'ffx-stage@.service',
      {
        flag: '--listen',
        endpoint: stageEnv.get('FFX_LISTEN')!,
        key: stage.get('FFX_KEY'),
        trust: stage.get('FFX_TRUST'),
      },
      { dir: '/etc/ffx/keys', name: 'stage-%i' },
    );
    const coordinator = settings('ffx-coordinator.service');
    assertKeyed(
      'ffx-coordinator.service',
      {
        flag: '--bind',
        endpoint: coordinator.get('FFX_BIND')!,
        key: coordinator.get('FFX_KEY'),
        trust: coordinator.get('FFX_TRUST'),
      },
      { dir: '/etc/ffx/keys', name: 'coordinator' },
    );
  });

  it('stage.env.example holds only FFX_* assignments', () => {
    const lines = readFileSync(join(SYSTEMD, 'stage.env.example'), 'utf8')
      .split('\n')
      .filter((l) => l.trim() !== '' && !l.startsWith('#'));
    assert.ok(lines.length > 0);
    for (const line of lines) assert.match(line, /^FFX_[A-Z_]+=\S+$/);
    assert.ok(lines.some((l) => l.startsWith('FFX_COORDINATOR=tcp://')));
  });
});
