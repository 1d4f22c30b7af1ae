'use strict';
// A lease's page: its state, its phases with their times, its hook lines as they arrive
// (a progress line is redrawn in place by the next line of its source), its errors and
// its console (live while the lease runs; its recording once it is over). The stream
// goes on from the last entry received after any reconnection.
(async () => {
  const {el} = bv;
  await bv.whoami();
  const id = decodeURIComponent(location.pathname.split('/')[2] || '');
  document.getElementById('lease-id').textContent = id;
  document.title = 'boardvisor · lease ' + id.slice(0, 8);
  const hooks = document.getElementById('hooklines');
  const phases = document.getElementById('phases');
  const errors = document.getElementById('errors');
  const term = new Term(document.getElementById('console'), 5000);
  let consoleBytes = 0;
  let lastId = '';
  const progress = new Map(); // source -> the progress line the next line of it replaces

  const first = await bv.getJSON('/api/lease/' + encodeURIComponent(id));
  if (!first.ok) {
    bv.problem(first.data.error || ('HTTP ' + first.status));
    bv.live('done', 'not shown');
    return;
  }
  showLease(first.data);

  function set(idName, text) { document.getElementById(idName).textContent = text || '–'; }

  function showLease(l) {
    set('s-board', l.board || (l.queued ? 'queued (' + (l.selector || 'by name') + ')' : ''));
    set('s-client', l.client);
    const ph = document.getElementById('s-phase');
    ph.textContent = l.phase;
    ph.className = 'phase ph-' + l.phase;
    const st = document.getElementById('s-status');
    st.textContent = l.status;
    st.className = 'status st-' + l.status;
    set('s-message', l.message);
    set('s-created', bv.fmtTime(l.createdAt));
    set('s-begins', l.beginsAt ? bv.fmtTime(l.beginsAt) : '');
    set('s-ends', l.endsAt ? bv.fmtTime(l.endsAt) + ' (' + bv.relTime(l.endsAt) + ')' : '');
  }

  function sourceName(s) {
    return {BEFORE_LEASE_HOOK: 'beforeLease', AFTER_LEASE_HOOK: 'afterLease', MESSAGE: 'motd', SYSTEM: 'system', DRIVER: 'driver'}[s] || s;
  }

  function hookLine(e) {
    document.getElementById('no-hooklines').hidden = true;
    const li = el('li', {class: 'hook sev-' + e.severity + (e.progress ? ' progress' : ''), 'data-source': e.source},
      el('time', {text: bv.clock(e.time), title: bv.fmtTime(e.time)}),
      el('span', {class: 'src', text: sourceName(e.source)}),
      el('span', {class: 'sev', text: e.severity}),
      el('span', {class: 'text', text: e.text}),
      e.cut ? el('span', {class: 'cut', text: '(cut)'}) : null);
    const prev = progress.get(e.source);
    const stick = atBottom(hooks);
    if (prev) prev.replaceWith(li); else hooks.append(li);
    if (e.progress) progress.set(e.source, li); else progress.delete(e.source);
    if (stick) hooks.scrollTop = hooks.scrollHeight;
  }

  function atBottom(box) { return box.scrollHeight - box.scrollTop - box.clientHeight < 40; }

  const handlers = {
    lease: showLease,
    log(e, ev) {
      lastId = ev.lastEventId || lastId;
      switch (e.kind) {
        case 'phase':
          phases.append(el('li', {'data-phase': e.to},
            el('time', {text: bv.clock(e.time), title: bv.fmtTime(e.time)}),
            el('span', {class: 'phase ph-' + e.to, text: e.to}),
            e.message ? el('span', {class: 'note', text: e.message}) : null));
          break;
        case 'hook':
          hookLine(e);
          break;
        case 'error':
          errors.querySelector('.none')?.remove();
          errors.append(el('li', {},
            el('time', {text: bv.clock(e.time), title: bv.fmtTime(e.time)}),
            el('span', {class: 'kind', text: e.errorKind}), ' ', el('span', {text: e.message})));
          break;
        case 'console': {
          const box = document.getElementById('console');
          const stick = atBottom(box);
          const bin = atob(e.data);
          const bytes = new Uint8Array(bin.length);
          for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
          consoleBytes += bytes.length;
          term.write(bytes);
          document.getElementById('console-note').textContent = consoleBytes + ' bytes';
          if (stick) box.scrollTop = box.scrollHeight;
          break;
        }
        case 'gap':
          term.write(new TextEncoder().encode('\r\n[' + e.bytes + ' console bytes were dropped here]\r\n'));
          break;
      }
    },
    end(e, ev) {
      lastId = ev.lastEventId || lastId;
      const box = document.getElementById('ended');
      box.hidden = false;
      box.replaceChildren(el('strong', {text: 'Ended ' + e.phase}), ' at ' + bv.fmtTime(e.time) +
        (e.endedBy ? ' by ' + e.endedBy : '') + (e.reason ? ': ' + e.reason : ''));
      document.getElementById('console-title').textContent = 'Console recording';
      s.stop('ended');
    },
    problem(p) {
      bv.problem(p.message);
      if (p.fatal) s.stop('stopped');
    },
  };
  const s = bv.stream(() => '/api/events/lease/' + encodeURIComponent(id) + (lastId ? '?after=' + encodeURIComponent(lastId) : ''), handlers);
})().catch((e) => bv.problem(String(e)));
