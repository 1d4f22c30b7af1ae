'use strict';
// A small console view: board console bytes shown as text in the page. It decodes
// UTF-8 (across chunks), keeps the line being written so that a carriage return
// rewrites it (progress bars), honours backspace, tab and "erase to end of line", and
// colours text by SGR codes (foreground, bold) through a fixed set of CSS classes. Every
// other escape sequence (cursor moves, OSC titles, ...) is dropped: this is a log view,
// not a terminal emulator. Text is only ever set with textContent.
class Term {
  constructor(root, maxLines) {
    this.root = root;
    this.maxLines = maxLines || 5000;
    this.dec = new TextDecoder('utf-8');
    this.line = []; // [{ch, cls}]
    this.col = 0;
    this.cls = '';
    this.fg = null;
    this.bold = false;
    this.esc = null; // null, '', '[params', ']' (OSC), or 'x' (one more char)
    this.cur = document.createElement('div');
    this.cur.className = 'tl cur';
    root.append(this.cur);
    this.count = 0;
  }

  write(bytes) {
    const s = this.dec.decode(bytes, {stream: true});
    for (const ch of s) this.put(ch);
    this.render(this.cur, this.line);
    this.trim();
  }

  put(ch) {
    if (this.esc !== null) { this.escape(ch); return; }
    switch (ch) {
      case '\x1b': this.esc = ''; return;
      case '\r': this.col = 0; return;
      case '\n': this.newline(); return;
      case '\b': this.col = Math.max(0, this.col - 1); return;
      case '\t': { const n = 8 - (this.col % 8); for (let i = 0; i < n; i++) this.char(' '); return; }
      case '\x07': return;
    }
    if (ch < ' ' || ch === '\x7f') return; // other control characters
    this.char(ch);
  }

  char(ch) {
    while (this.line.length < this.col) this.line.push({ch: ' ', cls: ''});
    this.line[this.col] = {ch, cls: this.cls};
    this.col++;
  }

  newline() {
    const done = document.createElement('div');
    done.className = 'tl';
    this.render(done, this.line);
    this.root.insertBefore(done, this.cur);
    this.count++;
    this.line = [];
    this.col = 0;
  }

  escape(ch) {
    const e = this.esc;
    if (e === '') {
      if (ch === '[') this.esc = '[';
      else if (ch === ']') this.esc = ']';
      else if ('()*+#%'.includes(ch)) this.esc = 'x';
      else this.esc = null;
      return;
    }
    if (e === 'x') { this.esc = null; return; }
    if (e[0] === ']') { // OSC: ends with BEL or ESC \
      if (ch === '\x07' || (ch === '\\' && e.endsWith('\x1b'))) this.esc = null;
      else if (e.length < 4096) this.esc = e + ch;
      else this.esc = null;
      return;
    }
    // CSI: parameters, then a final byte in @..~
    if (ch >= '@' && ch <= '~') {
      this.csi(e.slice(1), ch);
      this.esc = null;
    } else if (e.length < 64) this.esc = e + ch;
    else this.esc = null;
  }

  csi(params, final) {
    if (final === 'K') {
      const n = params === '' ? 0 : Number(params);
      if (n === 0) this.line.length = Math.min(this.line.length, this.col);
      else if (n === 2) { this.line = []; }
      return;
    }
    if (final !== 'm') return;
    const ps = params === '' ? [0] : params.split(';').map((p) => Number(p) || 0);
    for (let i = 0; i < ps.length; i++) {
      const p = ps[i];
      if (p === 0) { this.fg = null; this.bold = false; }
      else if (p === 1) this.bold = true;
      else if (p === 22) this.bold = false;
      else if (p >= 30 && p <= 37) this.fg = p - 30;
      else if (p >= 90 && p <= 97) this.fg = p - 90 + 8;
      else if (p === 39) this.fg = null;
      else if (p === 38 || p === 48) { i += ps[i + 1] === 5 ? 2 : 4; } // 256-colour and RGB: not shown
    }
    this.cls = (this.fg === null ? '' : 'c' + this.fg) + (this.bold ? ' b' : '');
  }

  render(div, cells) {
    div.replaceChildren();
    let run = '', cls = null;
    const flush = () => {
      if (!run) return;
      if (cls) {
        const s = document.createElement('span');
        s.className = cls;
        s.textContent = run;
        div.append(s);
      } else div.append(document.createTextNode(run));
      run = '';
    };
    for (const c of cells) {
      if (c.cls !== cls) { flush(); cls = c.cls; }
      run += c.ch;
    }
    flush();
  }

  trim() {
    while (this.count > this.maxLines) {
      this.root.firstChild.remove();
      this.count--;
    }
  }

  text() {
    return this.root.textContent;
  }
}
