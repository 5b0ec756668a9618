#!/usr/bin/env python3
"""Helpers for bench/run.sh: template rendering, bounded load runs with CPU
accounting, output parsing, the idle-TLS memory client, and the summary table.

Standard library only (runs on a fresh Debian with python3).

Sub-commands (see run.sh for how they are called):
  render   TEMPLATE OUT MODES KEY=VALUE...   substitute {KEY}; keep only the
           '#>> mode' ... '#<<' blocks whose mode is in MODES (space separated)
  load     --raw FILE --jsonl FILE --timeout S [--cpus C] [--proxy-pids "P.."]
           [--meta k=v ...] -- TOOL ARGS...   run one bounded load, record it
  mem      --port P --n N --pids "P.." --jsonl F [--cpus C] [--request 1]
           open N idle TLS connections, record the proxy's RSS growth
  rss      PIDS...                           summed VmRSS (KiB) of the trees
  summary  RESULTS.jsonl OUT.md [--targets]  the one table + details
"""
import asyncio
import json
import os
import re
import resource
import signal
import ssl
import statistics
import subprocess
import sys
import time

CLK_TCK = os.sysconf('SC_CLK_TCK')


# --------------------------------------------------------------- rendering
def cmd_render(argv):
    tmpl, out, modes = argv[0], argv[1], set(argv[2].split())
    kv = dict(a.split('=', 1) for a in argv[3:])
    lines, keep, stack = [], True, []
    for line in open(tmpl):
        s = line.strip()
        if s.startswith('#>>'):
            stack.append(keep)
            keep = keep and s[3:].strip() in modes
            continue
        if s.startswith('#<<'):
            keep = stack.pop()
            continue
        if keep:
            lines.append(line)
    text = ''.join(lines)
    for k, v in kv.items():
        text = text.replace('{' + k + '}', v)
    left = sorted(set(re.findall(r'\{([A-Z][A-Z0-9_]*)\}', text)))
    if left:
        sys.exit('render %s: unsubstituted placeholders: %s' % (tmpl, ' '.join(left)))
    with open(out, 'w') as f:
        f.write(text)


# ------------------------------------------------------------ process info
def children_map():
    kids = {}
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            s = open('/proc/%s/stat' % d).read()
            ppid = int(s[s.rfind(')') + 2:].split()[1])
            kids.setdefault(ppid, []).append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    return kids


def tree(roots):
    kids, out, todo = children_map(), [], list(roots)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def ticks(pids):
    t = 0
    for p in pids:
        try:
            s = open('/proc/%d/stat' % p).read()
            f = s[s.rfind(')') + 2:].split()
            t += int(f[11]) + int(f[12])
        except (OSError, ValueError, IndexError):
            pass
    return t


def rss_kib(pids):
    t = 0
    for p in pids:
        try:
            for line in open('/proc/%d/status' % p):
                if line.startswith('VmRSS:'):
                    t += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return t


def cpu_stat():
    """{cpuN: (busy, total)} jiffies from /proc/stat."""
    r = {}
    for line in open('/proc/stat'):
        if re.match(r'cpu\d', line):
            f = line.split()
            v = [int(x) for x in f[1:]]
            total = sum(v[:8])
            r[f[0]] = (total - v[3] - v[4], total)
    return r


# ------------------------------------------------------------------ parsing
UNIT_MS = {'us': 1e-3, 'ms': 1.0, 's': 1e3, 'm': 6e4}
UNIT_MB = {'B': 1e-6, 'KB': 1.024e-3, 'MB': 1.048576, 'GB': 1073.741824}


def lat_ms(tok):
    m = re.match(r'([\d.]+)(us|ms|s|m)$', tok)
    return float(m.group(1)) * UNIT_MS[m.group(2)] if m else None


def parse_wrk(text):
    r = dict(rate=None, mbps=None, p50=None, p99=None, errors=0, requests=None)
    m = re.search(r'Requests/sec:\s+([\d.]+)', text)
    if m:
        r['rate'] = float(m.group(1))
    m = re.search(r'Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)', text)
    if m:  # wrk's MB are MiB; report decimal MB/s
        r['mbps'] = float(m.group(1)) * UNIT_MB[m.group(2)]
    for pct, key in (('50%', 'p50'), ('99%', 'p99')):
        m = re.search(r'^\s+' + pct + r'\s+(\S+)', text, re.M)
        if m:
            r[key] = lat_ms(m.group(1))
    m = re.search(r'(\d+) requests in', text)
    if m:
        r['requests'] = int(m.group(1))
    m = re.search(r'Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)', text)
    if m:
        # with 'Connection: close' wrk counts the server's close as a read
        # error on some versions; connect/write/timeout are real failures
        c, rd, w, to = map(int, m.groups())
        r['errors'] += c + w + to
        r['read_errors'] = rd
    m = re.search(r'Non-2xx or 3xx responses: (\d+)', text)
    if m:
        r['errors'] += int(m.group(1))
    return r


def parse_h2load(text):
    r = dict(rate=None, mbps=None, p50=None, p99=None, errors=0, requests=None)
    m = re.search(r'finished in [\d.]+\w*, ([\d.]+) req/s, ([\d.]+)(B|KB|MB|GB)/s', text)
    if m:
        r['rate'] = float(m.group(1))
        r['mbps'] = float(m.group(2)) * UNIT_MB[m.group(3)]
    m = re.search(r'requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout', text)
    if m:
        r['requests'] = int(m.group(2))
        r['errors'] = int(m.group(3)) + int(m.group(4)) + int(m.group(5))
    m = re.search(r'status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx, (\d+) 5xx', text)
    if m:
        r['errors'] += int(m.group(1)) + int(m.group(2))
    m = re.search(r'time for request:\s+(\S+)\s+(\S+)\s+(\S+)', text)
    if m:
        r['mean_ms'] = lat_ms(m.group(3))
    m = re.search(r'Application protocol: (\S+)', text)
    if m:
        r['proto'] = m.group(1)
    return r


# -------------------------------------------------------------------- load
def cmd_load(argv):
    opts, i = {'meta': {}}, 0
    while argv[i] != '--':
        k = argv[i]
        if k == '--meta':
            a, b = argv[i + 1].split('=', 1)
            opts['meta'][a] = b
        else:
            opts[k[2:]] = argv[i + 1]
        i += 2
    cmd = argv[i + 1:]
    tool = os.path.basename(cmd[0])
    if opts.get('cpus'):
        cmd = ['taskset', '-c', opts['cpus']] + cmd
    roots = [int(p) for p in opts.get('proxy-pids', '').split()]
    pids = tree(roots) if roots else []
    t0, s0, w0 = ticks(pids), cpu_stat(), time.monotonic()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(opts['raw'], 'w') as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=float(opts['timeout']))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            rc = 'timeout'
    w1, s1 = time.monotonic(), cpu_stat()
    pids = tree(roots) if roots else []  # nginx/haproxy workers may be new
    t1 = ticks(pids)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = w1 - w0
    text = open(opts['raw'], errors='replace').read()
    r = parse_h2load(text) if tool == 'h2load' else parse_wrk(text)
    r.update(opts['meta'])
    r['rc'] = rc
    r['wall'] = wall
    r['proxy_cpu'] = (t1 - t0) / CLK_TCK / wall if roots else None  # cores
    r['client_cpu'] = ((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)) / wall
    r['cpu_busy'] = {c: round(100.0 * (s1[c][0] - s0[c][0]) / max(1, s1[c][1] - s0[c][1]), 1) for c in s1}
    if rc not in (0,) and r['rate'] is None:
        r['errors'] = max(r['errors'], 1)
    with open(opts['jsonl'], 'a') as f:
        f.write(json.dumps(r) + '\n')
    pc = r['proxy_cpu']
    print('%-11s %-8s w%s rep%s  %s  errors=%s  proxy_cpu=%s client_cpu=%.0f%%  cpus=%s' % (
        r.get('test'), r.get('proxy'), r.get('workers'), r.get('rep'),
        fmt_figure(r, r.get('unit', 'req/s')), r['errors'],
        '-' if pc is None else '%.0f%%' % (100 * pc), 100 * r['client_cpu'],
        ' '.join('%s=%s%%' % kv for kv in sorted(r['cpu_busy'].items()))), file=sys.stderr)


def figure(r, unit):
    if unit == 'KiB/conn':
        return r.get('kib_per_conn')
    if unit == 'MB/s':
        return r.get('mbps')
    if unit == 'ms':
        return r.get('p99')
    return r.get('rate')


def fmt_figure(r, unit):
    v = figure(r, unit)
    if v is None:
        return '%s=-' % unit
    s = '%s=%s' % (unit, fmt(v))
    if unit == 'ms' and r.get('rate') is not None:
        s += ' (at %s req/s, p50 %s ms)' % (fmt(r['rate']), fmt(r.get('p50')))
    return s


def fmt(v, unit=''):
    if v is None:
        return '-'
    if abs(v) >= 100:
        return '{:,.0f}'.format(v)
    if abs(v) >= 10:
        return '{:.1f}'.format(v)
    return '{:.2f}'.format(v) if abs(v) >= 1 else '{:.3f}'.format(v)


def cmd_mem(argv):
    """mem --port P --n N --pids "P.." --jsonl F [--cpus C] [--request 1] [--meta k=v]"""
    opts, i = {'meta': {}}, 0
    while i < len(argv):
        if argv[i] == '--meta':
            a, b = argv[i + 1].split('=', 1)
            opts['meta'][a] = b
        else:
            opts[argv[i][2:]] = argv[i + 1]
        i += 2
    if opts.get('cpus'):
        os.sched_setaffinity(0, {int(c) for c in opts['cpus'].split(',')})
    roots = [int(p) for p in opts['pids'].split()]
    before = rss_kib(tree(roots))
    n = int(opts['n'])
    request = opts.get('request') == '1'
    plain = opts.get('plain') == '1'
    r = dict(opts['meta'])

    async def go():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(['http/1.1'])
        if plain:
            ctx = None
        sem = asyncio.Semaphore(64)
        req = b'GET /1k HTTP/1.1\r\nHost: localhost\r\n\r\n'

        async def one():
            async with sem:
                try:
                    rd, wr = await asyncio.wait_for(
                        asyncio.open_connection('127.0.0.1', int(opts['port']), ssl=ctx), 20)
                    if request:
                        wr.write(req)
                        await wr.drain()
                        head = await asyncio.wait_for(rd.readuntil(b'\r\n\r\n'), 20)
                        m = re.search(rb'content-length:\s*(\d+)', head, re.I)
                        if m:
                            await asyncio.wait_for(rd.readexactly(int(m.group(1))), 20)
                    else:
                        # let the server finish its side (TLS 1.3 tickets)
                        await asyncio.sleep(0.05)
                    return (rd, wr)
                except Exception:
                    return None
        t0 = time.monotonic()
        conns = [c for c in await asyncio.gather(*[one() for _ in range(n)]) if c]
        await asyncio.sleep(2)  # settle: lazily freed buffers, allocator
        after = rss_kib(tree(roots))
        r['open_s'] = time.monotonic() - t0
        for _, wr in conns:
            wr.close()
        await asyncio.sleep(0.5)
        return len(conns), after
    opened, after = asyncio.run(go())
    r.update(conns=opened, rss_before_kib=before, rss_after_kib=after, errors=n - opened,
             kib_per_conn=(after - before) / opened if opened else None)
    with open(opts['jsonl'], 'a') as f:
        f.write(json.dumps(r) + '\n')
    print('%-11s %-8s w%s  %d/%d idle %s conns (request=%d): RSS %d -> %d KiB = %s KiB/conn' % (
        r.get('test'), r.get('proxy'), r.get('workers'), opened, n, 'TCP' if plain else 'TLS', request, before, after,
        fmt(r['kib_per_conn'])), file=sys.stderr)


# ----------------------------------------------------------------- summary
# test id -> (figure, unit, higher_is_better, issue target vs haproxy per core)
TESTS = [
    ('https_h1', 'HTTPS keep-alive, HTTP/1.1, 1 KiB (wrk)', 'req/s', True, 1.1),
    ('https_h2', 'HTTPS keep-alive, HTTP/2, 1 KiB (h2load)', 'req/s', True, 1.1),
    ('http_ka', 'plain HTTP keep-alive, 1 KiB (wrk)', 'req/s', True, 1.0),
    ('hs_full', 'new TLS conns, full handshake (no resumption)', 'conn/s', True, 1.3),
    ('hs_resume', 'new TLS conns, resumed (tickets)', 'conn/s', True, 1.3),
    ('hs_full_tls', '`tls` listener: new conns, full handshake', 'conn/s', True, 1.3),
    ('hs_resume_tls', '`tls` listener: new conns, resumed (tickets)', 'conn/s', True, 1.3),
    ('tcp_bulk', 'L4 tcp pass-through, 10 MiB body', 'MB/s', True, 1.0),
    ('tcp_cps', 'L4 tcp, new connection per request', 'conn/s', True, None),
    ('tls_bulk', 'tls termination -> tcp, 10 MiB body', 'MB/s', True, None),
    ('lat_https', 'p99 latency, HTTPS/1.1 at fixed moderate load', 'ms', False, 1.0),
    ('lat_tcp', 'p99 latency, L4 tcp at fixed moderate load', 'ms', False, 1.0),
    ('mem', 'RSS per idle TLS keep-alive connection (after one request)', 'KiB/conn', False, 1.0),
    ('mem_noreq', 'RSS per idle TLS connection (no request yet)', 'KiB/conn', False, None),
    ('mem_tls', 'RSS per idle `tls` connection (after one request)', 'KiB/conn', False, None),
    ('mem_tcp', 'RSS per idle L4 tcp connection (after one request)', 'KiB/conn', False, None),
    ('mem_tcp_noreq', 'RSS per idle L4 tcp connection (no request yet)', 'KiB/conn', False, None),
]
TEST_INFO = {t[0]: t for t in TESTS}


def cpu_list(spec):
    out = []
    for part in (spec or '').split(','):
        if part:
            a, _, b = part.partition('-')
            out += list(range(int(a), int(b or a) + 1))
    return out


def load_busy(r):
    """Busy % of the load generator's CPUs (client + backends) in a run."""
    busy = r.get('cpu_busy') or {}
    cpus = cpu_list(r.get('load_cpus')) or [int(c[3:]) for c in busy]
    v = [busy.get('cpu%d' % c) for c in cpus]
    v = [x for x in v if x is not None]
    return sum(v) / len(v) if v else None


def median(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def cmd_summary(argv):
    path, out_md = argv[0], argv[1]
    proxies = argv[2].split() if len(argv) > 2 else ['haproxy', 'nginx', 'vipd']
    skips = {}  # (test, proxy) -> reason
    rows = []
    for line in open(path):
        r = json.loads(line)
        if r.get('kind') == 'skip':
            skips[(r['test'], r['proxy'])] = r['reason']
        elif 'kind' not in r:
            rows.append(r)
    groups = {}
    for r in rows:
        groups.setdefault((r['test'], r['proxy'], str(r['workers'])), []).append(r)
    workers = sorted({k[2] for k in groups}, key=int)

    def agg(test, proxy, w):
        rs = groups.get((test, proxy, w), [])
        unit = TEST_INFO[test][2]
        vals = [figure(r, unit) for r in rs]
        vals = [v for v in vals if v is not None]
        if not vals:
            return None
        pcs, ccs, lbs = [], [], []
        for r in rs:
            v, pc = figure(r, unit), r.get('proxy_cpu')
            if v is not None and pc and unit not in ('ms', 'KiB/conn'):
                pcs.append(v / pc)
            if r.get('client_cpu') is not None:
                ccs.append(r['client_cpu'] / max(1, int(r.get('threads') or 1)))
            if load_busy(r) is not None:
                lbs.append(load_busy(r))
        return dict(med=median(vals), lo=min(vals), hi=max(vals), n=len(vals),
                    per_core=median(pcs), proxy_cpu=median([r.get('proxy_cpu') for r in rs]),
                    client_cpu=median(ccs), load_busy=median(lbs), rate=median([r.get('rate') for r in rs]),
                    p50=median([r.get('p50') for r in rs]),
                    errors=sum(int(r.get('errors') or 0) for r in rs),
                    conns=median([r.get('conns') for r in rs]))

    peers = [p for p in ('haproxy', 'nginx') if p in proxies and 'vipd' in proxies]
    cols = ['figure', 'unit', 'w'] + proxies + ['vipd/%s' % p for p in peers] + ['target vs haproxy (per core)']
    out = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    notes = []
    details = ['| test | proxy | w | median | min..max | n | proxy CPU | per proxy core | client thread CPU | load CPUs busy | p50 ms | errors |',
               '|---|---|---|---|---|---|---|---|---|---|---|---|']
    verdicts = []
    for test, desc, unit, higher, target in TESTS:
        present = any(k[0] == test for k in groups) or any(k[0] == test for k in skips)
        if not present:
            continue
        for w in workers:
            a = {p: agg(test, p, w) for p in proxies}
            if not any(a.values()) and not any((test, p) in skips for p in proxies):
                continue
            cells = []
            for p in proxies:
                if a[p] is None:
                    reason = skips.get((test, p))
                    cells.append('n/a: %s' % reason if reason else 'failed')
                    continue
                c = fmt(a[p]['med'])
                if a[p]['per_core'] is not None:
                    c += ' (%s/core)' % fmt(a[p]['per_core'])
                cells.append(c)

            def ratio(x, y):
                if not (a.get(x) and a.get(y)) or not a[y]['med']:
                    return '-', None
                r = a[x]['med'] / a[y]['med']
                s = '%.2f' % r
                rc = None
                if a[x]['per_core'] and a[y]['per_core']:
                    rc = a[x]['per_core'] / a[y]['per_core']
                    s += ' (%.2f/core)' % rc
                return s, (rc if rc is not None else r)
            rh, rhv = ratio('vipd', 'haproxy')
            rcells = [ratio('vipd', p)[0] for p in peers]
            tgt = '-'
            if target is not None:
                tgt = ('>= %.1fx' if higher else '<= %.1fx') % target
                if rhv is not None:
                    ok = rhv >= target if higher else rhv <= target
                    tgt += ': %s' % ('met' if ok else 'NOT met')
                    verdicts.append((test, w, ok))
            out.append('| %s |' % ' | '.join([desc, unit, w] + cells + rcells + [tgt]))
            for p in proxies:
                x = a[p]
                if x is None:
                    continue
                details.append('| %s | %s | %s | %s | %s..%s | %d | %s | %s | %s | %s | %s | %d |' % (
                    test, p, w, fmt(x['med']), fmt(x['lo']), fmt(x['hi']), x['n'],
                    '-' if x['proxy_cpu'] is None else '%.0f%%' % (100 * x['proxy_cpu']),
                    fmt(x['per_core']),
                    '-' if x['client_cpu'] is None else '%.0f%%' % (100 * x['client_cpu']),
                    '-' if x['load_busy'] is None else '%.0f%%' % x['load_busy'],
                    fmt(x['p50']), x['errors']))
            if unit not in ('ms', 'KiB/conn'):
                cb = [(p, a[p]['client_cpu'], a[p]['load_busy']) for p in proxies
                      if a[p] and a[p]['client_cpu'] is not None]
                bound = [p for p, c, lb in cb if c >= 0.9 or (lb or 0) >= 95]
                s = ', '.join('%s %.0f%%/%s' % (
                    p, 100 * c, '-' if lb is None else '%.0f%%' % lb) for p, c, lb in cb)
                if bound:
                    notes.append('- %s w%s: client thread / load CPUs busy: %s -> LOAD-SIDE BOUND (%s)' % (test, w, s, ', '.join(bound)))
                elif test.startswith('hs_'):
                    notes.append('- %s w%s: client thread / load CPUs busy: %s -> the client is not the bottleneck' % (test, w, s))
            if test.startswith('lat_'):
                rates = ', '.join('%s %s req/s' % (p, fmt(a[p]['rate'])) for p in proxies if a[p])
                notes.append('- %s w%s: achieved load %s (same connections and think time for all).' % (test, w, rates))
            if test.startswith('mem'):
                cs = ', '.join('%s %d' % (p, a[p]['conns'] or 0) for p in proxies if a[p])
                notes.append('- %s w%s: idle connections actually opened: %s.' % (test, w, cs))
    text = '\n'.join(out) + '\n'
    if notes:
        text += ('\nNotes (LOAD-SIDE BOUND: the load generator thread used >= 90% of a core, or the CPUs it '
                 'shares with the backends were >= 95% busy, so the raw rate may be the load side\'s limit '
                 'rather than the proxy\'s: compare the per-core figures):\n') + '\n'.join(notes) + '\n'
    text += '\nDetails (medians over runs; per proxy core = figure / proxy utime+stime share of one core):\n\n' + '\n'.join(details) + '\n'
    with open(out_md, 'w') as f:
        f.write(text)
    print(text)


def cmd_check(argv):
    """Smoke check: every (test, proxy) row has a non-zero figure, or an n/a."""
    path, proxies = argv[0], argv[1].split()
    rows, skips, started = [], set(), set()
    for line in open(path):
        r = json.loads(line)
        if r.get('kind') == 'skip':
            skips.add((r['test'], r['proxy']))
        elif r.get('kind') == 'started':
            started.add(r['proxy'])
        elif 'kind' not in r:
            rows.append(r)
    bad = []
    for p in proxies:
        if p not in started:
            bad.append('%s did not start' % p)
    tests = {r['test'] for r in rows} | {t for t, _ in skips}
    for t in sorted(tests):
        unit = TEST_INFO[t][2]
        for p in proxies:
            if (t, p) in skips:
                continue
            vals = [figure(r, unit) for r in rows if r['test'] == t and r['proxy'] == p]
            if not any(v for v in vals if v):
                bad.append('%s: no non-zero figure for %s' % (t, p))
    for b in bad:
        print('SMOKE FAIL: ' + b, file=sys.stderr)
    if bad:
        sys.exit(1)
    print('smoke OK: %d figures, contestants %s all started; n/a: %s' % (
        len(rows), ' '.join(proxies), ', '.join('%s/%s' % s for s in sorted(skips)) or 'none'))


if __name__ == '__main__':
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == 'render':
        cmd_render(args)
    elif cmd == 'load':
        cmd_load(args)
    elif cmd == 'mem':
        cmd_mem(args)
    elif cmd == 'rss':
        print(rss_kib(tree([int(p) for p in args])))
    elif cmd == 'summary':
        cmd_summary(args)
    elif cmd == 'check':
        cmd_check(args)
    else:
        sys.exit('unknown command %s' % cmd)
