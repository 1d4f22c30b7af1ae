// Shared by the dashboard's pages. Untrusted text (board names, labels, hook lines,
// console bytes) is only ever set as text: el() builds elements with textContent and
// text nodes, never innerHTML.
'use strict';

const bv = (() => {
  let me = null;

  // el('a', {class: 'x', href: '/lease/' + encodeURIComponent(id), text: label}, child...)
  function el(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k === 'href' || k.startsWith('data-') || k === 'title' || k === 'type' || k === 'placeholder') e.setAttribute(k, v);
      else throw new Error('el: unknown property ' + k);
    }
    for (const k of kids) {
      if (k === null || k === undefined || k === false) continue;
      e.append(typeof k === 'string' ? document.createTextNode(k) : k);
    }
    return e;
  }

  function toLogin() {
    location.assign('/login?next=' + encodeURIComponent(location.pathname + location.search + location.hash));
  }

  async function whoami() {
    const r = await fetch('/api/me', {credentials: 'same-origin', cache: 'no-store'});
    if (r.status === 401) {
      toLogin();
      return new Promise(() => {});
    }
    if (!r.ok) throw new Error('the dashboard did not answer who you are (HTTP ' + r.status + ')');
    me = await r.json();
    nav();
    return me;
  }

  async function getJSON(url) {
    const r = await fetch(url, {credentials: 'same-origin', cache: 'no-store'});
    if (r.status === 401) toLogin();
    const data = await r.json().catch(() => ({error: 'HTTP ' + r.status}));
    return {ok: r.ok, status: r.status, data};
  }

  // post sends a state-changing request with the session's CSRF token.
  async function post(url, body) {
    const r = await fetch(url, {
      method: 'POST', credentials: 'same-origin', cache: 'no-store',
      headers: {'Content-Type': 'application/json', 'X-CSRF-Token': me ? me.csrf : ''},
      body: JSON.stringify(body || {}),
    });
    if (r.status === 401) toLogin();
    const data = await r.json().catch(() => ({error: 'HTTP ' + r.status}));
    return {ok: r.ok, status: r.status, data};
  }

  function nav() {
    const n = document.getElementById('nav');
    if (!n || !me) return;
    const here = location.pathname;
    const link = (href, text) => el('a', {href, class: here === href ? 'here' : null, text});
    const out = el('button', {type: 'button', class: 'link', text: 'log out'});
    out.addEventListener('click', async () => {
      await post('/logout', {});
      location.assign('/login');
    });
    n.replaceChildren(link('/', 'Boards'), link('/supervisors', 'Supervisors'),
      el('span', {class: 'user', text: me.user + (me.admin ? ' (admin)' : '')}), out);
  }

  function problem(msg) {
    const p = document.getElementById('problem');
    if (!p) return;
    p.hidden = !msg;
    p.textContent = msg || '';
  }

  function live(state, text) {
    const l = document.getElementById('live');
    if (!l) return;
    l.className = 'live ' + state;
    l.textContent = text;
  }

  // stream follows an event stream. url() is asked for the address at each (re)connection
  // (so it can carry where to go on from); handlers are by event name. The browser
  // reconnects by itself after a network error, sending Last-Event-ID; a stream the server
  // refused or ended is opened again here after a pause, unless stop() was called.
  function stream(url, handlers) {
    let es = null, stopped = false, timer = null;
    const open = () => {
      es = new EventSource(url());
      es.addEventListener('open', () => live('on', 'live'));
      for (const [name, fn] of Object.entries(handlers)) {
        es.addEventListener(name, (e) => fn(JSON.parse(e.data), e));
      }
      es.addEventListener('error', async () => {
        if (stopped) return;
        live('off', 'reconnecting…');
        if (es.readyState !== EventSource.CLOSED) return; // the browser retries by itself
        es.close();
        const r = await fetch('/api/me', {credentials: 'same-origin', cache: 'no-store'}).catch(() => null);
        if (r && r.status === 401) { toLogin(); return; }
        if (!stopped) timer = setTimeout(open, 2000);
      });
    };
    open();
    return {
      stop(text) {
        stopped = true;
        clearTimeout(timer);
        if (es) es.close();
        live('done', text || 'ended');
      },
    };
  }

  function fmtTime(iso) {
    if (!iso) return '–';
    const d = new Date(iso);
    return d.toLocaleString(undefined, {hour12: false});
  }

  function clock(iso) {
    if (!iso) return '';
    const d = new Date(iso);
    const p = (n, w) => String(n).padStart(w || 2, '0');
    return p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds()) + '.' + p(d.getMilliseconds(), 3);
  }

  function relTime(iso) {
    if (!iso) return '–';
    const s = Math.round((new Date(iso) - Date.now()) / 1000);
    const a = Math.abs(s);
    const t = a < 60 ? a + 's' : a < 3600 ? Math.round(a / 60) + 'm' : a < 86400 ? (a / 3600).toFixed(1) + 'h' : (a / 86400).toFixed(1) + 'd';
    return s >= 0 ? 'in ' + t : t + ' ago';
  }

  function leaseHref(id) { return '/lease/' + encodeURIComponent(id); }

  return {el, whoami, getJSON, post, stream, problem, live, fmtTime, clock, relTime, leaseHref, me: () => me};
})();
