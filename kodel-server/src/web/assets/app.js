// Kodel's web view: the little the pages need a script for. Forms post without a reload
// (and show a refusal next to them), the board and the task page follow their event
// streams, and the move dialog. Every piece of HTML put in the page comes from the
// server, which escapes what people and agents wrote; text from events goes in as text.

const $ = (sel, root = document) => root.querySelector(sel);

// A fragment from the server. A session that ended answers 401: reload, which shows the
// sign-in page (never put that page inside this one).
async function get(url) {
  const r = await fetch(url, { headers: { 'x-kodel-fetch': '1' }, credentials: 'same-origin' });
  if (r.status === 401) { location.reload(); return null; }
  return r;
}

// Forms marked data-fetch: posted by fetch; a refusal is shown in the form's .err.
document.addEventListener('submit', async (e) => {
  const form = e.target;
  if (!form.matches('form[data-fetch]')) return;
  e.preventDefault();
  const err = $('.err', form);
  if (err) err.textContent = '';
  const body = new URLSearchParams(new FormData(form, e.submitter));
  const action = e.submitter?.getAttribute('formaction') || form.action;
  const buttons = form.querySelectorAll('button');
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const r = await fetch(action, { method: 'POST', body, headers: { 'x-kodel-fetch': '1' }, credentials: 'same-origin' });
    if (r.ok) {
      form.dispatchEvent(new CustomEvent('kodel:done', { bubbles: true }));
      form.querySelectorAll('input:not([type=hidden]), textarea').forEach((i) => { i.value = ''; });
    } else if (err) {
      if (r.status === 401) { location.reload(); return; }
      err.textContent = await r.text();
    }
  } catch {
    if (err) err.textContent = 'The server could not be reached; try again.';
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
});

// One stream per page, from the newest event the page was rendered after (an org
// with no events yet: from now); the browser reconnects by itself and resumes with
// Last-Event-ID.
function follow(url, since, handlers) {
  const es = new EventSource(Number(since) > 0 ? `${url}?last_event_id=${since}` : url);
  for (const [type, fn] of Object.entries(handlers)) {
    es.addEventListener(type, (m) => { try { fn(JSON.parse(m.data)); } catch (x) { console.error(x); } });
  }
  // The server lost our place: reload (at most once a minute, never in a loop).
  es.addEventListener('resync', () => {
    es.close();
    const last = Number(sessionStorage.getItem('kodel-resync') || 0);
    if (Date.now() - last > 60000) { sessionStorage.setItem('kodel-resync', String(Date.now())); location.reload(); }
  });
  return es;
}

const CARD_EVENTS = ['task.created', 'task.updated', 'task.moved', 'task.archived', 'task.unarchived', 'job.created',
  'job.started', 'job.succeeded', 'job.failed', 'job.cancelled', 'job.requeued', 'job.paused', 'job.resumed'];

const board = $('[data-board]');
if (board) {
  const { org, project, since, q } = board.dataset;
  const waiting = new Set();
  let timer = null;
  const flush = async () => {
    timer = null;
    const keys = [...waiting];
    waiting.clear();
    for (const key of keys) await refreshCard(key);
  };
  const refreshCard = async (key) => {
    const r = await get(`/o/${org}/t/${encodeURIComponent(key)}/card?q=${encodeURIComponent(q)}`);
    if (!r) return;
    const old = document.getElementById(`card-${key}`);
    if (r.status === 204) { old?.remove(); counts(); return; }
    if (!r.ok) return;
    const tpl = document.createElement('template');
    tpl.innerHTML = (await r.text()).trim();
    const card = tpl.content.firstElementChild;
    const list = [...board.querySelectorAll('.col')].find((c) => c.dataset.status === card.dataset.status)?.querySelector('ol');
    if (!list) { old?.remove(); counts(); return; }
    const focused = old?.contains(document.activeElement);
    old?.remove();
    const n = Number(card.dataset.n);
    const after = [...list.children].find((c) => Number(c.dataset.n) > n);
    list.insertBefore(card, after ?? null);
    if (focused) card.querySelector('a')?.focus();
    counts();
  };
  const counts = () => board.querySelectorAll('.col').forEach((c) => { $('.n', c).textContent = c.querySelectorAll('.card').length; });
  const changed = (ev) => {
    if (!ev.task || !ev.task.startsWith(`${project}-`)) return;
    waiting.add(ev.task);
    timer ??= setTimeout(flush, 30);
  };
  follow(`/o/${org}/events`, since, Object.fromEntries(CARD_EVENTS.map((t) => [t, changed])));

  // The move dialog: where the card may go first, then the other statuses.
  const dialog = $('#move-dialog');
  board.addEventListener('click', (e) => {
    const btn = e.target.closest('button[data-move]');
    if (!btn || !dialog) return;
    const key = btn.dataset.move;
    const col = btn.closest('.col');
    const next = col.dataset.next ? col.dataset.next.split('\n') : [];
    const others = [...board.querySelectorAll('.col')].map((c) => c.dataset.status).filter((s) => s !== col.dataset.status && !next.includes(s));
    const form = $('form', dialog);
    form.action = `/o/${org}/t/${encodeURIComponent(key)}/move`;
    $('.key', dialog).textContent = key;
    $('.err', form).textContent = '';
    const select = $('select', form);
    select.replaceChildren();
    for (const [label, names] of [['Allowed from here', next], ['Other statuses', others]]) {
      if (!names.length) continue;
      const group = document.createElement('optgroup');
      group.label = label;
      for (const n of names) { const o = document.createElement('option'); o.textContent = n; group.append(o); }
      select.append(group);
    }
    dialog.returnTo = btn;
    dialog.showModal();
    select.focus();
  });
  dialog?.addEventListener('kodel:done', (e) => {
    dialog.close();
    const key = $('.key', dialog).textContent;
    waiting.add(key);
    timer ??= setTimeout(flush, 0);
  });
  dialog?.querySelector('[data-close]')?.addEventListener('click', () => dialog.close());
  dialog?.addEventListener('close', () => dialog.returnTo?.focus());
  $('form.create')?.addEventListener('kodel:done', () => { $('form.create input[name=title]')?.focus(); });

  // Keyboard: "/" filters, "c" creates.
  document.addEventListener('keydown', (e) => {
    if (e.target.closest('input, textarea, select, dialog') || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === '/') { e.preventDefault(); $('form.filter input')?.focus(); }
    if (e.key === 'c') { e.preventDefault(); $('form.create input[name=title]')?.focus(); }
  });
}

const task = $('[data-task]');
if (task) {
  const { org, key, since } = task.dataset;
  let job = task.dataset.job;
  const stream = $('#stream');
  const steps = $('#steps');
  const live = $('#live');
  const atBottom = () => stream.scrollHeight - stream.scrollTop - stream.clientHeight < 40;
  const keepDown = (wasDown) => { if (wasDown) stream.scrollTop = stream.scrollHeight; };
  const lastSeq = () => Number(steps.lastElementChild?.dataset.seq ?? -1);
  let fetching = Promise.resolve();

  const moreSteps = () => {
    fetching = fetching.then(async () => {
      if (!job) return;
      const r = await get(`/o/${org}/t/${encodeURIComponent(key)}/steps?job=${job}&after=${lastSeq()}`);
      if (!r?.ok) return;
      const down = atBottom();
      const tpl = document.createElement('template');
      tpl.innerHTML = await r.text();
      steps.append(tpl.content);
      live.textContent = '';
      keepDown(down);
    });
  };

  let sideTimer = null;
  const refreshSide = () => {
    sideTimer ??= setTimeout(async () => {
      sideTimer = null;
      const side = $('#side');
      // A reviewer's half-typed comment is not thrown away: try again later.
      if ([...side.querySelectorAll('textarea')].some((t) => t.value) || side.contains(document.activeElement?.closest('textarea, input'))) { refreshSide(); return; }
      const r = await get(`/o/${org}/t/${encodeURIComponent(key)}/side`);
      if (r?.ok) side.innerHTML = await r.text();
    }, 100);
  };

  const handlers = {};
  for (const t of ['task.updated', 'task.moved', 'task.archived', 'task.unarchived', 'comment.added', 'job.succeeded', 'job.failed',
    'job.cancelled', 'job.requeued', 'job.paused', 'job.resumed', 'artifact.approved', 'artifact.rejected', 'budget.warning']) handlers[t] = refreshSide;
  const newJob = (ev) => {
    refreshSide();
    if (ev.payload.job_id === job) return;
    job = ev.payload.job_id;
    steps.replaceChildren();
    live.textContent = '';
    $('#no-job')?.remove();
  };
  handlers['job.created'] = newJob;
  handlers['job.started'] = newJob;
  handlers['job.step'] = (ev) => { if (ev.payload.job_id === job) moreSteps(); };
  handlers['job.output'] = (ev) => {
    if (ev.payload.job_id !== job) return;
    const down = atBottom();
    live.textContent += ev.payload.text;
    keepDown(down);
  };
  follow(`/o/${org}/t/${encodeURIComponent(key)}/events`, since, handlers);
  stream.scrollTop = stream.scrollHeight;
  // Steps stored between the page's render and the stream's start are fetched once.
  moreSteps();
}
