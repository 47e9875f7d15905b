// The Aggregator's dashboard: plain JavaScript, no build step, no library,
// nothing loaded from elsewhere.
//
// Every tick it reads GET /readyz and GET /metrics and computes the rates
// (received, applied, duplicates per second), the lag and the fsync latency
// of the last interval from the differences of two scrapes; every
// statsEvery it reads GET /stats (lifetime totals) and the shown page of GET
// /topics. The event browser reads GET /feed, and follows it by long-poll
// (wait=25s): EventSource cannot send an Authorization header, and a
// long-poll resumes by `after` like the stream would.
//
// When reading is protected (the server sets data-auth="required" on
// <body>) the page asks for the read token, keeps it in sessionStorage (this
// tab only) and sends it as a bearer token with each call. Event data is
// rendered with textContent only.
'use strict';

(() => {
  const tokenKey = 'aggregator.readToken';
  const history = 60;          // points of each sparkline
  const statsEvery = 5000;     // ms between GET /stats and GET /topics
  const topicsLimit = 25;
  const feedLimit = 50;        // events of a page of the browser
  const maxRows = 500;         // event rows kept while live
  const liveLimit = 500;       // events of one long-poll
  const liveEvery = 500;       // ms at least between two long-polls
  const longPoll = '25s';
  const fsyncMetric = 'aggregator_wal_fsync_duration_seconds';

  const $ = (id) => document.getElementById(id);

  class AuthError extends Error {}

  const state = {
    token: sessionStorage.getItem(tokenKey) || '',
    running: false,
    timer: 0,
    prev: null,             // previous /metrics sample
    series: {},             // sparkline values by id
    lastStats: 0,           // time of the last /stats read
    lastSeq: 0,
    topicCursor: '',        // cursor of the shown topics page ('' = first)
    topicNext: null,
    feed: null,             // the running feed reader: {gen, ctrl}
    feedGen: 0,
    nextAfter: 0,
  };

  // call fetches an API path (relative, so that the page works behind a
  // path prefix) with the token, and throws on a refusal or an error reply.
  async function call(path, signal) {
    const headers = {};
    if (state.token) {
      headers.Authorization = 'Bearer ' + state.token;
    }
    const resp = await fetch(path, { headers, cache: 'no-store', signal });
    if (resp.status === 401 || resp.status === 403) {
      throw new AuthError(resp.status === 401 ? 'the token was refused' : 'the token lacks the read scope');
    }
    if (!resp.ok) {
      let msg = String(resp.status);
      try {
        msg += ' ' + (await resp.json()).error;
      } catch (e) {
        // not a JSON error reply
      }
      throw new Error(path.split('?')[0] + ': ' + msg);
    }
    return resp;
  }

  async function callJSON(path, signal) {
    return (await call(path, signal)).json();
  }

  // ---- numbers and sparklines

  function fmtRate(v) {
    if (v === null || !isFinite(v)) {
      return '–';
    }
    return v < 10 ? v.toFixed(1) : Math.round(v).toLocaleString('en-US');
  }

  function fmtCount(v) {
    return Number(v).toLocaleString('en-US');
  }

  function fmtSeconds(s) {
    if (s === null || !isFinite(s)) {
      return '–';
    }
    const ms = s * 1000;
    if (ms < 1) {
      return (ms * 1000).toFixed(0) + ' µs';
    }
    return (ms < 10 ? ms.toFixed(2) : ms.toFixed(0)) + ' ms';
  }

  function fmtBytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return (i === 0 ? n : n.toFixed(1)) + ' ' + units[i];
  }

  // push adds a value to a sparkline and redraws it: a polyline scaled to
  // the largest value shown.
  function push(id, v) {
    const values = state.series[id] || (state.series[id] = []);
    values.push(v === null || !isFinite(v) ? 0 : v);
    if (values.length > history) {
      values.shift();
    }
    const max = Math.max(...values, 1e-12);
    const step = 120 / (history - 1);
    const x0 = 120 - step * (values.length - 1);
    const pts = values.map((y, i) => (x0 + i * step).toFixed(1) + ',' + (29 - (28 * y) / max).toFixed(1));
    $('spark-' + id).firstElementChild.setAttribute('points', pts.join(' '));
  }

  // ---- /metrics

  // parseMetrics reads the Prometheus text format into a list of samples.
  function parseMetrics(text) {
    const out = [];
    const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
    const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (const l of text.split('\n')) {
      if (l === '' || l[0] === '#') {
        continue;
      }
      const m = line.exec(l);
      if (!m) {
        continue;
      }
      const labels = {};
      for (const lm of (m[2] || '').matchAll(label)) {
        labels[lm[1]] = lm[2];
      }
      out.push({ name: m[1], labels, value: Number(m[3]) });
    }
    return out;
  }

  function sample(samples) {
    const get = (name) => {
      const s = samples.find((x) => x.name === name);
      return s ? s.value : null;
    };
    const buckets = samples
      .filter((x) => x.name === fsyncMetric + '_bucket')
      .map((x) => [Number(x.labels.le === '+Inf' ? Infinity : x.labels.le), x.value])
      .sort((a, b) => a[0] - b[0]);
    return {
      t: performance.now(),
      received: get('aggregator_events_received_total'),
      unique: get('aggregator_events_unique_total'),
      duplicates: get('aggregator_events_duplicate_total'),
      lag: get('aggregator_consumer_lag'),
      fsyncCount: get(fsyncMetric + '_count'),
      fsyncSum: get(fsyncMetric + '_sum'),
      buckets,
    };
  }

  // quantile estimates the q-quantile of the observations between two
  // scrapes of a histogram, as Prometheus's histogram_quantile does: linear
  // within the bucket that holds it; the highest finite bound when it falls
  // in +Inf.
  function quantile(q, prev, cur) {
    const d = cur.map(([le, c], i) => [le, c - (prev[i] ? prev[i][1] : 0)]);
    const total = d.length ? d[d.length - 1][1] : 0;
    if (total <= 0) {
      return null;
    }
    const rank = q * total;
    for (let i = 0; i < d.length; i++) {
      if (d[i][1] >= rank) {
        const [le, c] = d[i];
        const lower = i === 0 ? 0 : d[i - 1][0];
        const below = i === 0 ? 0 : d[i - 1][1];
        if (le === Infinity) {
          return lower;
        }
        return c === below ? le : lower + ((le - lower) * (rank - below)) / (c - below);
      }
    }
    return null;
  }

  function showRates(cur) {
    const prev = state.prev;
    state.prev = cur;
    $('lag').textContent = cur.lag === null ? '–' : fmtCount(cur.lag);
    push('lag', cur.lag);
    if (!prev) {
      return;
    }
    const dt = (cur.t - prev.t) / 1000;
    // A counter that went down is a restarted server: no rate this time.
    const rate = (k) => (cur[k] === null || prev[k] === null || cur[k] < prev[k] ? null : (cur[k] - prev[k]) / dt);
    const received = rate('received');
    const unique = rate('unique');
    const duplicates = rate('duplicates');
    const applied = unique === null || duplicates === null ? null : unique + duplicates;
    $('rate-received').textContent = fmtRate(received);
    $('rate-applied').textContent = fmtRate(applied);
    $('rate-unique').textContent = 'new ' + fmtRate(unique) + ' /s';
    $('rate-duplicates').textContent = fmtRate(duplicates);
    push('received', received);
    push('applied', applied);
    push('duplicates', duplicates);

    let avg = null;
    let p99 = null;
    const commits = cur.fsyncCount - prev.fsyncCount;
    if (cur.fsyncCount !== null && prev.fsyncCount !== null && commits > 0) {
      avg = (cur.fsyncSum - prev.fsyncSum) / commits;
      p99 = quantile(0.99, prev.buckets, cur.buckets);
      $('fsync-count').textContent = fmtRate(commits / dt) + ' commits /s';
    } else {
      $('fsync-count').textContent = 'no commit in the interval';
    }
    $('fsync-avg').textContent = fmtSeconds(avg);
    $('fsync-p99').textContent = fmtSeconds(p99);
    push('fsync-avg', avg);
    push('fsync-p99', p99);
  }

  // ---- /stats and /topics

  async function refreshStats() {
    const s = await callJSON('stats');
    state.lastSeq = s.last_seq;
    $('totals').textContent =
      `lifetime: ${fmtCount(s.received)} received · ${fmtCount(s.unique_processed)} unique · ` +
      `${fmtCount(s.duplicate_dropped)} duplicates · last seq ${fmtCount(s.last_seq)} · ` +
      `log ${fmtBytes(s.wal.bytes)} in ${s.wal.segments} segment${s.wal.segments === 1 ? '' : 's'} · ` +
      `up ${fmtCount(s.uptime_seconds)} s`;
    $('topic-count').textContent = fmtCount(s.topic_count) + (s.topic_count === 1 ? ' topic' : ' topics');
    const list = $('topic-list');
    list.replaceChildren(...s.topics.slice(0, 200).map((t) => {
      const o = document.createElement('option');
      o.value = t;
      return o;
    }));
  }

  async function loadTopics(cursor) {
    const q = new URLSearchParams({ limit: String(topicsLimit) });
    if (cursor) {
      q.set('cursor', cursor);
    }
    const page = await callJSON('topics?' + q);
    state.topicCursor = cursor;
    state.topicNext = page.next_cursor;
    $('topics-next').disabled = page.next_cursor === null;
    $('topic-rows').replaceChildren(...page.topics.map((t) => {
      const tr = document.createElement('tr');
      const name = document.createElement('td');
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'linklike';
      b.textContent = t.topic;
      b.title = 'show the events of this topic';
      b.addEventListener('click', () => {
        $('feed-topic').value = t.topic;
        startFeed('latest');
      });
      name.append(b);
      const count = document.createElement('td');
      count.className = 'num';
      count.textContent = fmtCount(t.count);
      tr.append(name, count);
      return tr;
    }));
  }

  // ---- the event browser

  function eventRow(e) {
    const tr = document.createElement('tr');
    const payload = JSON.stringify(e.payload);
    const cells = [String(e.seq), e.topic, e.event_id, e.timestamp, e.source,
      payload.length > 200 ? payload.slice(0, 200) + '…' : payload];
    cells.forEach((text, i) => {
      const td = document.createElement('td');
      td.textContent = text;
      if (i === 0) {
        td.className = 'num';
      }
      if (i === 5) {
        td.className = 'payload';
        td.title = payload;
      }
      tr.append(td);
    });
    return tr;
  }

  // show puts events at the top of the table (newest first).
  function show(events, replace) {
    const rows = $('event-rows');
    const made = events.slice().reverse().map(eventRow);
    if (replace) {
      rows.replaceChildren(...made);
    } else {
      rows.prepend(...made);
    }
    while (rows.childElementCount > maxRows) {
      rows.lastElementChild.remove();
    }
  }

  function feedQuery(after, limit, wait) {
    const q = new URLSearchParams({ after: String(after), limit: String(limit) });
    const topic = $('feed-topic').value.trim();
    if (topic) {
      q.set('topic', topic);
    }
    if (wait) {
      q.set('wait', wait);
    }
    return 'feed?' + q;
  }

  // startFeed shows one page: the latest events, then (when live) follows
  // the feed by long-poll; or, which turns live off, the first page or the
  // page after the newest shown. A new call ends the previous reader.
  async function startFeed(where) {
    if (state.feed) {
      state.feed.ctrl.abort();
    }
    if (where !== 'latest') {
      $('feed-live').checked = false;
    }
    const feed = { gen: ++state.feedGen, ctrl: new AbortController() };
    state.feed = feed;
    const topic = $('feed-topic').value.trim();
    const status = $('feed-status');
    let after = 0;
    try {
      if (where === 'latest') {
        await refreshStats();
        after = Math.max(0, state.lastSeq - feedLimit);
      } else if (where === 'newer') {
        after = state.nextAfter;
      }
      const page = await callJSON(feedQuery(after, feedLimit, ''), feed.ctrl.signal);
      show(page.events, where !== 'newer');
      state.nextAfter = page.next_after;
      const scope = topic ? `topic ${topic}` : 'all topics';
      status.textContent = page.events.length
        ? `${scope}: seq ${page.events[0].seq} to ${page.next_after}`
        : `${scope}: no events after seq ${after}` + (topic && where === 'latest' ? ` (latest looks at the last ${feedLimit} seqs)` : '');
      if (where === 'latest' && $('feed-live').checked) {
        follow(feed);
      }
    } catch (e) {
      report(e, feed);
    }
  }

  // follow reads the feed after the newest event shown, by long-poll, at
  // most every liveEvery ms. When it is so far behind that a page is full
  // and more than a page of events follow, it skips ahead to the newest
  // ones: the table shows the latest events, not a backlog.
  async function follow(feed) {
    const status = $('feed-status');
    while (state.feed === feed && state.running && $('feed-live').checked) {
      const began = performance.now();
      try {
        const page = await callJSON(feedQuery(state.nextAfter, liveLimit, longPoll), feed.ctrl.signal);
        if (state.feed !== feed) {
          return;
        }
        state.nextAfter = page.next_after;
        if (page.events.length) {
          show(page.events, false);
          status.textContent = `live: newest seq ${page.next_after}`;
        }
        if (page.events.length === liveLimit && state.lastSeq - liveLimit > state.nextAfter) {
          state.nextAfter = state.lastSeq - liveLimit;
          status.textContent += ` (skipped ahead to seq ${state.nextAfter})`;
        }
      } catch (e) {
        if (!report(e, feed)) {
          return;
        }
        await sleep(2000); // the server is away: try again
      }
      await sleep(liveEvery - (performance.now() - began));
    }
  }

  // report shows an error of the feed; it returns whether to keep going.
  function report(e, feed) {
    if (e.name === 'AbortError' || state.feed !== feed) {
      return false;
    }
    if (e instanceof AuthError) {
      askToken(e.message);
      return false;
    }
    $('feed-status').textContent = 'feed: ' + e.message;
    return true;
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
  }

  // ---- the loop

  async function tick() {
    if (!state.running) {
      return;
    }
    const status = $('status');
    try {
      const ready = await fetch('readyz', { cache: 'no-store' });
      const body = await ready.json();
      status.textContent = ready.ok ? 'ready' : body.error;
      status.className = 'status ' + (ready.ok ? 'ok' : 'bad');
      const text = await (await call('metrics')).text();
      showRates(sample(parseMetrics(text)));
      if (performance.now() - state.lastStats >= statsEvery) {
        state.lastStats = performance.now();
        await Promise.all([refreshStats(), loadTopics(state.topicCursor)]);
      }
    } catch (e) {
      if (e instanceof AuthError) {
        askToken(e.message);
        return;
      }
      status.textContent = 'unreachable: ' + e.message;
      status.className = 'status bad';
    }
    if (state.running) {
      state.timer = setTimeout(tick, Number($('interval').value));
    }
  }

  function start() {
    state.running = true;
    state.prev = null;
    state.lastStats = 0;
    $('login').hidden = true;
    $('dash').hidden = false;
    $('forget').hidden = !state.token;
    tick();
    startFeed('latest');
  }

  function stop() {
    state.running = false;
    clearTimeout(state.timer);
    if (state.feed) {
      state.feed.ctrl.abort();
      state.feed = null;
    }
  }

  function askToken(why) {
    stop();
    $('dash').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = why || '';
    $('status').textContent = 'token needed';
    $('status').className = 'status';
    $('token').focus();
  }

  function main() {
    $('login').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      state.token = $('token').value.trim();
      $('token').value = '';
      try {
        await call('stats');
      } catch (e) {
        $('login-error').textContent = e.message;
        return;
      }
      sessionStorage.setItem(tokenKey, state.token);
      start();
    });
    $('forget').addEventListener('click', () => {
      sessionStorage.removeItem(tokenKey);
      state.token = '';
      askToken('');
    });
    $('interval').addEventListener('change', () => {
      clearTimeout(state.timer);
      state.prev = null;
      tick();
    });
    $('topics-first').addEventListener('click', () => loadTopics('').catch(showError));
    $('topics-next').addEventListener('click', () => {
      if (state.topicNext !== null) {
        loadTopics(state.topicNext).catch(showError);
      }
    });
    $('feed-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      startFeed('latest');
    });
    $('feed-start').addEventListener('click', () => startFeed('start'));
    $('feed-newer').addEventListener('click', () => startFeed('newer'));
    $('feed-live').addEventListener('change', () => {
      if ($('feed-live').checked) {
        startFeed('latest');
      } else if (state.feed) {
        state.feed.ctrl.abort();
      }
    });

    if (document.body.dataset.auth === 'required' && !state.token) {
      askToken('');
      return;
    }
    start();
  }

  function showError(e) {
    if (e instanceof AuthError) {
      askToken(e.message);
      return;
    }
    $('status').textContent = e.message;
    $('status').className = 'status bad';
  }

  main();
})();
