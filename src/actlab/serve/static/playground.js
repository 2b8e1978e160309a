const INFO = JSON.parse(document.getElementById('info').textContent);
const $ = s => document.querySelector(s);
let lastExport = {};
function err(msg){ $('#error').textContent = msg || ''; }
function vis(t){ return t.replace(/\n/g,'\u21b5').replace(/\t/g,'\u21e5').replace(/^ +$/,m=>'\u2423'.repeat(m.length)); }
async function post(url, body){
  const r = await fetch(url, {method:'POST', headers:{'Content-Type':'application/json'}, body:JSON.stringify(body)});
  const j = await r.json(); if(!r.ok) throw new Error(j.error || r.statusText); return j;
}
function download(name, obj){
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([JSON.stringify(obj, null, 1)], {type:'application/json'}));
  a.download = name; a.click(); setTimeout(()=>URL.revokeObjectURL(a.href), 1000);
}
// tabs
document.querySelectorAll('nav button').forEach(b => b.onclick = () => {
  document.querySelectorAll('nav button,.view').forEach(x => x.classList.remove('on'));
  b.classList.add('on'); $('#' + b.dataset.view).classList.add('on'); err('');
});
// steering vectors
function addVectorRow(name){
  const vs = INFO.vectors;
  if(!vs.length){  // an empty state, not an error: generating shows the model's own text until a vector exists
    if(!$('#no-vectors')){
      const p = document.createElement('p'); p.id = 'no-vectors'; p.className = 'muted';
      p.textContent = 'No steering vector loaded yet. Extract one from a few pairs (below), or restart with ' +
                      '"actlab serve MODEL --vector FILE". Until then "generate" shows the model\'s default text.';
      $('#vectors').appendChild(p);
    }
    document.querySelector('details').open = true; return;
  }
  if($('#no-vectors')) $('#no-vectors').remove();
  const i = document.querySelectorAll('.vrow').length;
  const row = document.createElement('div'); row.className = 'row vrow';
  const sel = document.createElement('select'); sel.id = 'vec-' + i;
  vs.forEach(v => { const o = document.createElement('option'); o.value = o.textContent = v.name; sel.appendChild(o); });
  if(name) sel.value = name;
  const lay = document.createElement('input'); lay.id = 'layers-' + i; lay.size = 8;
  const v0 = vs.find(v => v.name === sel.value); lay.value = v0.layers[Math.floor(v0.layers.length / 2)];
  sel.onchange = () => { const v = vs.find(x => x.name === sel.value); lay.value = v.layers[Math.floor(v.layers.length/2)]; };
  const mult = document.createElement('input'); mult.type = 'range'; mult.min = -20; mult.max = 20; mult.step = 0.5;
  mult.value = 0; mult.id = 'mult-' + i;
  const shown = document.createElement('span'); shown.id = 'mult-val-' + i; shown.textContent = '0';
  mult.oninput = () => shown.textContent = mult.value;
  const lab = t => { const l = document.createElement('label'); l.textContent = t; return l; };
  row.append(lab('vector'), sel, lab('layers'), lay, lab('multiplier'), mult, shown);
  $('#vectors').appendChild(row);
}
function steerSpec(){
  return [...document.querySelectorAll('.vrow')].map((r, i) => ({
    vector: $('#vec-' + i).value, layers: $('#layers-' + i).value.trim(), multiplier: +$('#mult-' + i).value}));
}
$('#add-vector').onclick = () => addVectorRow();
$('#extract').onclick = async () => {
  err(''); $('#extract').disabled = true;
  try {
    const v = await post('/api/extract', {pairs: $('#pairs').value, name: $('#vec-name').value || undefined});
    INFO.vectors.push(v); addVectorRow(v.name);
    $('#extract-status').textContent = 'extracted ' + v.name + ' at ' + v.point + ' (' + v.layers.length + ' layers)';
  } catch(e){ err(e.message); } finally { $('#extract').disabled = false; }
};
// generation, streamed
let controller = null;
$('#generate').onclick = async () => {
  err(''); let body;
  try {
    body = {prompt: $('#prompt').value, steer: steerSpec(), positions: $('#positions').value,
            max_new_tokens: +$('#max-new').value, chat: $('#chat').checked, sample: $('#sample').checked,
            seed: +$('#seed').value};
    if($('#ablate')){ const a = $('#ablate').value.trim(); if(a) body.ablate = a.split(',').map(x => +x.trim()); }
  } catch(e){ err(e.message); return; }
  $('#out-default').textContent = ''; $('#out-steered').textContent = '';
  if($('#effect')) $('#effect').textContent = '';
  $('#generate').disabled = true; $('#status').textContent = 'generating...';
  controller = new AbortController(); let cancelled = false;
  try {
    const r = await fetch('/api/generate', {method:'POST', headers:{'Content-Type':'application/json'},
                                            body: JSON.stringify(body), signal: controller.signal});
    if(!r.ok){ const j = await r.json(); throw new Error(j.error || r.statusText); }
    const reader = r.body.getReader(); const dec = new TextDecoder(); let buf = '';
    for(;;){
      const {value, done} = await reader.read(); if(done) break;
      buf += dec.decode(value, {stream: true});
      let k;
      while((k = buf.indexOf('\n\n')) >= 0){
        const line = buf.slice(0, k); buf = buf.slice(k + 2);
        if(!line.startsWith('data: ')) continue;
        const ev = JSON.parse(line.slice(6));
        if(ev.error) throw new Error(ev.error);
        if(ev.side) $('#out-' + ev.side).textContent += ev.text;
        if(ev.effect) showEffect(ev.effect);
        if(ev.cancelled) cancelled = true;
        if(ev.done){ lastExport.generation = ev.export;
                     $('#status').textContent = cancelled ? 'stopped: the text was cut' : 'done'; }
      }
    }
  } catch(e){
    if(e.name !== 'AbortError'){ err(e.message); $('#status').textContent = 'failed'; }
    else $('#status').textContent = 'stopped: the text was cut';
  }
  finally { $('#generate').disabled = false; controller = null; }
};
function showEffect(e){
  // how much the feature edit can matter on this prompt (computed before generating)
  const parts = e.features.map(f => f.fires_on ? 'feature ' + f.feature + ' fires on ' + f.fires_on + ' of ' +
    e.tokens + ' prompt tokens (max ' + f.max.toFixed(2) + ')' : 'feature ' + f.feature +
    ' does not fire on the prompt (it changes nothing there; it may fire in the generated text)');
  $('#effect').textContent = parts.join('; ') + '. Next-token KL after the prompt, edit vs none: ' +
    e.kl_next_token.toPrecision(2) + ' nats' + (e.kl_next_token < 1e-3 ? ' (no visible effect expected)' : '') + '.';
}
$('#stop').onclick = async () => { await fetch('/api/cancel', {method:'POST', headers:{'Content-Type':'application/json'}, body:'{}'}); };
$('#export-gen').onclick = () => lastExport.generation ? download('generation.json', lastExport.generation)
                                                       : err('generate first');
// logit lens
$('#run-lens').onclick = async () => {
  err(''); $('#run-lens').disabled = true;
  try {
    const req = {prompt: $('#prompt').value, kind: $('#lens-kind').value, top_k: 5, lens: $('#lens-which').value};
    if($('#lens-steered').checked){ req.steer = steerSpec(); req.positions = $('#positions').value; }
    const res = await post('/api/lens', req);
    lastExport.lens = res; drawLens(res);
  } catch(e){ err(e.message); } finally { $('#run-lens').disabled = false; }
};
function drawLens(res){
  const t = document.createElement('table'); t.className = 'lens';
  const head = t.insertRow(); head.appendChild(document.createElement('th')).textContent = 'layer';
  res.tokens.forEach(tok => head.appendChild(document.createElement('th')).textContent = vis(tok));
  [...res.layers].reverse().forEach(L => {
    const r = t.insertRow(); r.appendChild(document.createElement('th')).textContent = L.layer;
    L.top.forEach((top, j) => {
      const c = r.insertCell(); const [tok, p] = top[0];
      c.textContent = vis(tok); c.style.background = 'rgba(44,127,184,' + Math.min(1, p).toFixed(2) + ')';
      if(p > 0.5) c.style.color = '#fff';
      c.dataset.tip = 'layer ' + L.layer + ', after ' + JSON.stringify(res.tokens[j]) + '\n' +
                      top.map(([s, q]) => (q * 100).toFixed(1).padStart(5) + '%  ' + JSON.stringify(s)).join('\n');
      c.className = 'lens-cell';
    });
  });
  const fin = t.insertRow(); fin.appendChild(document.createElement('th')).textContent = 'model';
  res.model_top.forEach(tok => fin.insertCell().textContent = vis(tok));
  $('#lens-out').replaceChildren(t);
}
document.addEventListener('mouseover', e => {
  const c = e.target.closest && e.target.closest('.lens-cell'); const tip = $('#lens-tip');
  if(!c){ tip.style.display = 'none'; return; }
  tip.textContent = c.dataset.tip; tip.style.display = 'block';
  tip.style.left = (e.clientX + 12) + 'px'; tip.style.top = (e.clientY + 12) + 'px';
});
$('#export-lens').onclick = () => lastExport.lens ? download('lens_grid.json', lastExport.lens) : err('run the lens first');
// SAE features
if($('#run-features')){
  $('#run-features').onclick = async () => {
    err(''); $('#run-features').disabled = true;
    try {
      const res = await post('/api/features', {prompt: $('#prompt').value, top_k: 4});
      lastExport.features = res; const box = $('#features-out'); box.replaceChildren();
      res.tokens.forEach((tok, j) => {
        const d = document.createElement('div'); d.className = 'tok';
        d.appendChild(document.createElement('b')).textContent = vis(tok);
        res.features[j].forEach(([f, v]) => {
          const s = document.createElement('span'); s.className = 'chip'; s.dataset.feature = f;
          s.textContent = '#' + f + ' ' + v.toFixed(2); s.onclick = () => openFeature(f); d.appendChild(s);
        });
        box.appendChild(d);
      });
    } catch(e){ err(e.message); } finally { $('#run-features').disabled = false; }
  };
  $('#export-features').onclick = () => lastExport.features ? download('token_features.json', lastExport.features)
                                                            : err('show the features first');
}
async function openFeature(f){
  err('');
  try {
    const r = await fetch('/api/feature/' + f); const j = await r.json(); if(!r.ok) throw new Error(j.error);
    lastExport.feature = j.dashboard;
    const holder = $('#feature-card'); holder.innerHTML = j.html;  // built server-side from escaped pieces
    holder.querySelectorAll('.card').forEach(c => c.classList.add('shown'));
  } catch(e){ err(e.message); }
}
addVectorRow();
