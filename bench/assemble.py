"""Writes BENCHMARKS.md from bench/results/latest.{json,md} and the hand-written parts
in bench/report/: head.md (method), notes.json (a verdict and an explanation per
target, written after reading the run), tail.md (the profile). Run it after `make bench`
once notes.json says what the new numbers mean: python3 bench/assemble.py"""
import json, os, re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(ROOT, "bench", "report")
d = json.load(open(os.path.join(ROOT, 'bench/results/latest.json')))
md = open(os.path.join(ROOT, 'bench/results/latest.md')).read()
head = open(os.path.join(REPORT, 'head.md')).read()
tail = open(os.path.join(REPORT, 'tail.md')).read()
notes = json.load(open(os.path.join(REPORT, 'notes.json')))
m = d['machine']
out = [head]
zv = re.sub(r'.*v([0-9.]+).*', lambda x: x.group(1), m.get('zstd', ''))
out.append(f"""
## Run

- Command: `{d['command']}` ({' '.join(d['argv'][1:]) if isinstance(d['argv'], list) else d['argv']}), {d['started']} → {d['finished']}.
- Ferry: commit {m.get('ferry_commit')}{(' — ' + m['ferry_build_note']) if m.get('ferry_build_note') else ''}.
- Machine: Debian {m.get('debian')}, kernel {m['kernel']}, {m['cores']} cores ({m.get('cpu')}), {m.get('memory_gib')} GiB, cgroups {m.get('cgroups')}, a VM whose freed memory goes back to the host.
- Peers: {m.get('podman')} with {m.get('runc')}, CRIU {m.get('criu','').replace('Version: ','')} (`/usr/local/sbin/criu`, the only CRIU installed), zstd {zv}.
""")
out.append("\n## Targets (2048 MiB, incompressible unless said; medians)\n")
for t in d['targets']:
    states = []
    for mode in ('cold', 'warm'):
        v = t[mode]; met = v['met']
        if 'bytes' in v.get('detail', '') and v.get('ferry') is not None:
            v = dict(v, detail=f"{v['ferry'] / 1048576:.1f} MiB vs podman's {v['limit'] / 1048576:.1f} MiB")
        states.append(f"{mode} **{'met' if met else ('not met' if met is False else 'n/a')}** ({v['detail']})")
    verdict = notes.get(t['target'], {})
    out.append(f"- **{t['target']}** — {verdict.get('verdict','')}: " + "; ".join(states) + ".")
    if verdict.get('why'):
        out.append(f"  {verdict['why']}")
out.append("\n## Headline ratios (medians, 2048 MiB incompressible)\n")
out.append("| ratio | cold | warm |\n|---|---|---|")
r = d['results']['2048']['incompressible'] if '2048' in d['results'] else None
if r:
    for peer in ('ferry/podman', 'ferry/runc', 'ferry/criu'):
        for k in r['cold']['ratios'][peer]:
            c = r['cold']['ratios'][peer].get(k); w = r['warm']['ratios'][peer].get(k)
            f = lambda x: '-' if x is None else f"{x:.2f}"
            out.append(f"| {peer} {k} | {f(c)} | {f(w)} |")
    out.append("\nFerry as a fraction of the machine's limits (1.0 = at the limit):\n")
    out.append("| | cold | warm |\n|---|---|---|")
    for k in r['cold'].get('fraction_of_limits', {}):
        out.append(f"| {k} | {r['cold']['fraction_of_limits'][k]:.2f} | {r['warm']['fraction_of_limits'].get(k, 0):.2f} |")
out.append(notes.get('_fractions_note', ''))
out.append("\n## Failures (recorded as failures, not times)\n")
fails = []
for size, bv in d['results'].items():
    for variant, bm in bv.items():
        for mode, e in bm.items():
            for tool, s in e['summary'].items():
                cyc = (s.get('cycle_errors') or {}).get('errors', [])
                for err in cyc:
                    fails.append(f"- {tool}, {size} MiB {variant} {mode}, cycle stopped: `{err}`")
                seen = set(cyc)
                for k, v in s.items():
                    if k.startswith(('leave_running', 'snapshot')):
                        for err in v.get('errors', []):
                            if err not in seen:
                                seen.add(err)
                                fails.append(f"- {tool}, {size} MiB {variant} {mode}, step {k.rsplit('_', 1)[0]} (cycle went on): `{err}`")
out += fails
out.append(notes.get('_failures_note', ''))
if d['not_implemented']:
    out.append("\n## Not implemented yet\n")
    for k, v in d['not_implemented'].items():
        out.append(f"- `{k}`: {v}")
out.append(tail)
out.append("\n## Latest tables\n")
body = md.split('\n', 1)[1]
body = body[body.index('Limits'):]
out.append(body.split('\nTargets:')[0])
open(os.path.join(ROOT, 'BENCHMARKS.md'), 'w').write('\n'.join(out))
print('ok')
