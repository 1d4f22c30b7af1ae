'use strict';
// The supervisors page: each supervisor's link, last contact and what it serves.
(async () => {
  const {el} = bv;
  await bv.whoami();
  const body = document.querySelector('#supervisors tbody');
  const rows = new Map();
  function tr(s) {
    const link = s.connected ? 'connected' : (s.gone ? 'gone (boards OFFLINE)' : 'disconnected');
    return el('tr', {'data-supervisor': s.id},
      el('td', {class: 'name', text: s.id}),
      el('td', {}, el('span', {class: 'link-' + (s.connected ? 'up' : s.gone ? 'gone' : 'down'), text: link})),
      el('td', {class: 'ends', 'data-at': s.lastContact || '', title: s.lastContact ? bv.fmtTime(s.lastContact) : null,
        text: s.connected ? 'now' : bv.relTime(s.lastContact)}),
      el('td', {text: s.version || '–'}),
      el('td', {class: 'num', text: String(s.boards)}),
      el('td', {class: 'num', text: String(s.liveLeases)}),
      el('td', {class: 'num', text: String(s.lastSeq)}),
      el('td', {class: 'num', title: 'not reported by supervisors yet', text: '–'}));
  }
  function count() { document.getElementById('count').textContent = String(rows.size); }
  bv.stream(() => '/api/events/supervisors', {
    reset() { rows.clear(); body.replaceChildren(); bv.problem(''); },
    ready: count,
    row(s) {
      if (s.kind === 'problem') { bv.problem(s.message); return; }
      const t = tr(s);
      const old = rows.get(s.id);
      if (old) old.replaceWith(t);
      else {
        const after = [...rows.keys()].filter((k) => k > s.id).sort()[0];
        body.insertBefore(t, after ? rows.get(after) : null);
      }
      rows.set(s.id, t);
      count();
    },
    remove(r) {
      if (r.kind === 'problem') { bv.problem(''); return; }
      if (rows.has(r.key)) { rows.get(r.key).remove(); rows.delete(r.key); }
      count();
    },
  });
  setInterval(() => {
    for (const td of document.querySelectorAll('td.ends[data-at]')) {
      if (td.dataset.at && td.textContent !== 'now') td.textContent = bv.relTime(td.dataset.at);
    }
  }, 15000);
})().catch((e) => bv.problem(String(e)));
