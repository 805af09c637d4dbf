// liaison web workspace: live alerts. Served from 'self' under a CSP without inline script.
// Compose: the live policy dry run, uploads read into the form, one entity kind's fields shown.
(function () {
  'use strict';
  var form = document.getElementById('compose');
  if (!form) { return; }
  var panel = document.getElementById('dryrun');
  var timer = null, asked = 0;
  function check() {
    var data = new URLSearchParams(new FormData(form));
    var mine = ++asked;
    fetch(form.dataset.check, { method: 'POST', body: data, credentials: 'same-origin' })
      .then(function (r) { return r.text(); })
      .then(function (html) {
        // Only the answer to the latest form is shown: an older one arriving late is dropped.
        if (mine !== asked) { return; }
        panel.innerHTML = html; panel.dataset.checked = String(mine);
      })
      .catch(function () { panel.textContent = 'The policy check is not reachable right now.'; });
  }
  function later() { if (timer) { clearTimeout(timer); } timer = setTimeout(check, 300); }
  form.addEventListener('input', later);
  form.addEventListener('change', later);
  Array.prototype.forEach.call(form.querySelectorAll('input.upload'), function (file) {
    file.addEventListener('change', function () {
      var f = file.files[0], slot = file.dataset.slot;
      if (!f) { return; }
      var reader = new FileReader();
      reader.onload = function () {
        var b64 = String(reader.result).split(',')[1] || '';
        form.elements['attachments[' + slot + '].name'].value = f.name;
        form.elements['attachments[' + slot + '].media_type'].value = f.type || 'application/octet-stream';
        form.elements['attachments[' + slot + '].content'].value = b64;
        later();
      };
      reader.readAsDataURL(f);
    });
  });
  function kinds() {
    Array.prototype.forEach.call(form.querySelectorAll('fieldset.entity'), function (fs) {
      var chosen = fs.querySelector('select').value;
      Array.prototype.forEach.call(fs.querySelectorAll('div.kind'), function (d) {
        d.hidden = d.dataset.kind !== chosen;
      });
    });
  }
  form.addEventListener('change', kinds);
  kinds();
  check();
}());

(function () {
  'use strict';
  var body = document.body;
  if (!body || body.dataset.live !== 'on') { return; }
  var bar = document.getElementById('alert-bar');
  var counter = document.getElementById('unread');
  var table = document.querySelector('table.inbox tbody');
  var audio = null;

  function beep(priority) {
    try {
      audio = audio || new (window.AudioContext || window.webkitAudioContext)();
      var o = audio.createOscillator(), g = audio.createGain();
      o.frequency.value = priority === 'FLASH' ? 880 : 660;
      o.connect(g); g.connect(audio.destination);
      g.gain.setValueAtTime(0.2, audio.currentTime);
      o.start(); o.stop(audio.currentTime + (priority === 'FLASH' ? 0.6 : 0.25));
    } catch (e) { /* no audio device: the visible alert remains */ }
  }

  function notify(p) {
    if (!('Notification' in window)) { return; }
    var show = function () {
      try { new Notification(p.priority + ' ' + p.type + ' from ' + p.from, { body: (p.case_ref || '') + ' ' + p.summary, tag: p.id }); } catch (e) { }
    };
    if (Notification.permission === 'granted') { show(); }
    else if (Notification.permission !== 'denied') { Notification.requestPermission().then(function (r) { if (r === 'granted') { show(); } }); }
  }

  function cell(text, cls) {
    var td = document.createElement('td');
    if (cls) { var s = document.createElement('span'); s.className = cls; s.textContent = text; td.appendChild(s); }
    else { td.textContent = text; }
    return td;
  }

  function addRow(p) {
    if (!table || body.dataset.rows !== 'on') { return; }
    var tr = document.createElement('tr');
    tr.className = 'unread new';
    tr.dataset.id = p.id;
    tr.appendChild(cell(p.priority, 'prio prio-' + p.priority));
    tr.appendChild(cell(p.type));
    tr.appendChild(cell(p.case_ref || ''));
    var s = document.createElement('td');
    var a = document.createElement('a');
    a.href = p.url; a.textContent = p.summary; a.className = 'open';
    s.appendChild(a); tr.appendChild(s);
    var m = document.createElement('td');
    p.markings.forEach(function (b) {
      var span = document.createElement('span');
      span.textContent = b[0]; span.className = b[1]; span.title = b[2];
      m.appendChild(span);
    });
    tr.appendChild(m);
    tr.appendChild(cell(p.from));
    tr.appendChild(cell(p.received));
    tr.appendChild(cell(p.deadline || ''));
    table.insertBefore(tr, table.firstChild);
    var total = document.getElementById('total');
    if (total) {
      var n = parseInt(total.textContent, 10);
      if (!isNaN(n)) { total.textContent = (n + 1) + ' packet(s)'; }
    }
  }

  var events = new EventSource('/events');
  events.addEventListener('open', function () { body.dataset.stream = 'open'; });
  events.addEventListener('error', function () { body.dataset.stream = 'closed'; });
  events.addEventListener('packet', function (ev) {
    var p = JSON.parse(ev.data);
    addRow(p);
    if (counter) { counter.textContent = String(p.unread); }
    document.title = '(' + p.unread + ') liaison';
    if (p.priority === 'FLASH' || p.priority === 'URGENT') {
      if (bar) {
        bar.textContent = p.priority + ' ' + p.type + ' from ' + p.from + ': ' + (p.case_ref || '') + ' ' + p.summary;
        bar.className = 'alert-bar on prio-' + p.priority;
      }
      beep(p.priority);
      notify(p);
    }
  });
  events.addEventListener('signed-out', function () { events.close(); window.location = '/signin'; });
  events.addEventListener('reload', function () { window.location.reload(); });
  if (bar) { bar.addEventListener('click', function () { bar.className = 'alert-bar'; }); }
}());
