'use strict';
// The boards page: every board (filtered by labels: ?selector=...), and the user's live
// leases (an admin's: everyone's), updated as the coordinator changes them.
(async () => {
  const {el} = bv;
  const me = await bv.whoami();
  const boardBody = document.querySelector('#boards tbody');
  const leaseBody = document.querySelector('#leases tbody');
  const input = document.getElementById('selector');
  document.getElementById('actions-head').hidden = !me.admin;
  if (me.admin) document.getElementById('leases-title').textContent = 'Leases (everyone\u2019s)';
  else document.getElementById('leases-title').textContent = 'Your leases';

  const boards = new Map(); // name -> {data, tr}
  const leases = new Map(); // id -> {data, tr}
  const problems = new Map();
  let names = []; // board names, sorted: the table's order
  let current = null;

  const selector = () => new URLSearchParams(location.search).get('selector') || '';
  input.value = selector();

  function mayOpen(b) { return b.lease && (me.admin || b.holder === me.user); }

  function boardRow(b) {
    const labels = el('td', {class: 'labels'});
    for (const k of Object.keys(b.labels).sort()) {
      const chip = el('button', {type: 'button', class: 'chip', title: 'filter by ' + k + '=' + b.labels[k], text: k + '=' + b.labels[k]});
      chip.addEventListener('click', () => addFilter(k + '=' + b.labels[k]));
      labels.append(chip);
    }
    const holder = mayOpen(b) ? el('a', {href: bv.leaseHref(b.lease), text: b.holder || b.lease}) : (b.holder || (b.lease ? 'another user' : '–'));
    const tr = el('tr', {'data-board': b.name},
      el('td', {class: 'name', text: b.name}),
      el('td', {text: b.supervisor}),
      labels,
      el('td', {}, el('span', {class: 'status st-' + b.status, text: b.status})),
      el('td', {}, el('span', {class: 'health h-' + b.health, text: b.health})),
      el('td', {class: 'holder'}, holder),
      el('td', {class: 'num queue', text: String(b.queue)}),
      el('td', {class: 'ends', 'data-at': b.endsAt || '', title: b.endsAt ? bv.fmtTime(b.endsAt) : null, text: b.endsAt ? bv.relTime(b.endsAt) : '–'}));
    if (me.admin) tr.append(actions(b));
    return tr;
  }

  function actions(b) {
    const td = el('td', {class: 'actions'});
    const on = b.health !== 'MAINTENANCE';
    const btn = el('button', {type: 'button', class: 'maint', text: on ? 'Maintenance…' : 'Back in service…'});
    btn.addEventListener('click', () => {
      const reason = el('input', {class: 'reason', placeholder: 'reason'});
      const ok = el('button', {type: 'button', class: 'confirm', text: on ? 'Put in maintenance' : 'Put back in service'});
      const cancel = el('button', {type: 'button', class: 'link', text: 'cancel'});
      const msg = el('span', {class: 'msg'});
      ok.addEventListener('click', async () => {
        ok.disabled = true;
        const r = await bv.post('/api/boards/' + encodeURIComponent(b.name) + '/maintenance', {on, reason: reason.value});
        if (!r.ok) { msg.textContent = r.data.error || ('HTTP ' + r.status); ok.disabled = false; }
        // On success the row is redrawn from the coordinator's change.
      });
      cancel.addEventListener('click', () => td.replaceChildren(btn));
      td.replaceChildren(reason, ok, cancel, msg);
      reason.focus();
    });
    td.append(btn);
    if (b.health === 'BAD') {
      // TODO(web): a "Clear quarantine" button (POST /api/boards/NAME/clear-quarantine,
      // with the CSRF token) once the coordinator's ClearQuarantine RPC is on main.
      td.append(el('span', {class: 'note', title: 'the coordinator has no ClearQuarantine yet', text: ' quarantined: clearing it from here is not available yet'}));
    }
    return td;
  }

  function leaseRow(l) {
    return el('tr', {'data-lease': l.id},
      el('td', {}, el('a', {href: bv.leaseHref(l.id), text: l.id.slice(0, 8)})),
      el('td', {text: l.client}),
      el('td', {text: l.board || (l.queued ? 'queued: ' + (l.selector || 'by name') : '–')}),
      el('td', {}, el('span', {class: 'phase ph-' + l.phase, text: l.phase})),
      el('td', {}, el('span', {class: 'status st-' + l.status, text: l.status})),
      el('td', {class: 'ends', 'data-at': l.endsAt || '', title: l.endsAt ? bv.fmtTime(l.endsAt) : null, text: l.endsAt ? bv.relTime(l.endsAt) : '–'}),
      el('td', {class: 'note', text: l.message || ''}));
  }

  function insertSorted(name) {
    let lo = 0, hi = names.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (names[mid] < name) lo = mid + 1; else hi = mid; }
    names.splice(lo, 0, name);
    return lo;
  }

  function putBoard(b) {
    const old = boards.get(b.name);
    const tr = boardRow(b);
    if (old) {
      // Keep an admin's open maintenance form while the row is unchanged otherwise.
      old.tr.replaceWith(tr);
    } else {
      const i = insertSorted(b.name);
      const after = names[i + 1];
      boardBody.insertBefore(tr, after ? boards.get(after).tr : null);
    }
    boards.set(b.name, {data: b, tr});
  }

  function count() {
    document.getElementById('count').textContent = boards.size + (selector() ? ' matching ' + selector() : '');
    document.getElementById('empty').hidden = boards.size > 0;
    document.getElementById('no-leases').hidden = leases.size > 0;
  }

  function reset() {
    boards.clear(); leases.clear(); problems.clear(); names = [];
    boardBody.replaceChildren(); leaseBody.replaceChildren();
    bv.problem('');
  }

  const handlers = {
    reset,
    problem(p) {
      bv.problem(p.message);
      if (p.fatal && current) current.stop('stopped');
    },
    ready: count,
    row(r) {
      if (r.kind === 'board') putBoard(r);
      else if (r.kind === 'lease') {
        const tr = leaseRow(r);
        const old = leases.get(r.id);
        if (old) old.tr.replaceWith(tr); else leaseBody.append(tr);
        leases.set(r.id, {data: r, tr});
      } else if (r.kind === 'problem') {
        problems.set(r.key, r.message);
        bv.problem([...problems.values()].join(' '));
      }
      count();
    },
    remove(r) {
      if (r.kind === 'board' && boards.has(r.key)) {
        boards.get(r.key).tr.remove();
        boards.delete(r.key);
        names.splice(names.indexOf(r.key), 1);
      } else if (r.kind === 'lease' && leases.has(r.key)) {
        leases.get(r.key).tr.remove();
        leases.delete(r.key);
      } else if (r.kind === 'problem') {
        problems.delete(r.key);
        bv.problem([...problems.values()].join(' '));
      }
      count();
    },
  };

  function connect() {
    if (current) current.stop('switching');
    current = bv.stream(() => '/api/events/farm?selector=' + encodeURIComponent(selector()), handlers);
  }

  function setFilter(s) {
    const q = new URLSearchParams(location.search);
    if (s) q.set('selector', s); else q.delete('selector');
    const qs = q.toString();
    history.pushState(null, '', location.pathname + (qs ? '?' + qs : ''));
    input.value = s;
    connect();
  }

  function addFilter(term) {
    const terms = selector().split(',').map((t) => t.trim()).filter((t) => t);
    if (!terms.includes(term)) terms.push(term);
    setFilter(terms.join(','));
  }

  document.getElementById('filter').addEventListener('submit', (e) => {
    e.preventDefault();
    setFilter(input.value.trim());
  });
  document.getElementById('clear').addEventListener('click', () => setFilter(''));
  window.addEventListener('popstate', () => { input.value = selector(); connect(); });

  // Relative times move on without the server.
  setInterval(() => {
    for (const td of document.querySelectorAll('td.ends[data-at]')) {
      if (td.dataset.at) td.textContent = bv.relTime(td.dataset.at);
    }
  }, 15000);

  connect();
})().catch((e) => bv.problem(String(e)));
