'use strict';
// The login form posts to /login; this only fills in where to go next and says why the
// last try failed (a fixed sentence: the query string is never shown).
(() => {
  const q = new URLSearchParams(location.search);
  const next = q.get('next') || '/';
  document.getElementById('next').value = next.startsWith('/') && !next.startsWith('//') ? next : '/';
  if (q.get('error') === 'token') {
    const e = document.getElementById('error');
    e.textContent = 'That token is not accepted by the coordinator.';
    e.hidden = false;
  }
})();
