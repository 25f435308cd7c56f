// Small SVG charts for the Pulse dashboard: no dependencies, no build step.
// Every mark carries its label and value as data attributes, so what is drawn
// can be read back (the dashboard test does).
"use strict";

const PulseCharts = (() => {
  const NS = "http://www.w3.org/2000/svg";

  function el(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function frame(target, width, height) {
    target.replaceChildren();
    const svg = el("svg", {viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img"});
    target.appendChild(svg);
    return svg;
  }

  // Vertical bars over time (or any ordered labels).
  function columns(target, points, opts = {}) {
    const width = 640, height = 220, pad = 32;
    const svg = frame(target, width, height);
    if (!points.length) { svg.appendChild(el("text", {x: pad, y: height / 2}, "no data")); return; }
    const max = Math.max(...points.map(p => p.value), 1);
    const step = (width - 2 * pad) / points.length;
    svg.appendChild(el("text", {x: 2, y: 14, class: "axis"}, String(max)));
    points.forEach((p, i) => {
      const h = (height - 2 * pad) * p.value / max;
      const bar = el("rect", {x: pad + i * step + 1, y: height - pad - h, width: Math.max(step - 2, 1), height: h,
                              class: opts.cls || "bar", "data-label": p.label, "data-value": p.value});
      bar.appendChild(el("title", {}, `${p.label}: ${p.value}`));
      svg.appendChild(bar);
    });
    svg.appendChild(el("text", {x: pad, y: height - 8, class: "axis"}, points[0].label));
    svg.appendChild(el("text", {x: width - pad, y: height - 8, class: "axis", "text-anchor": "end"},
                       points[points.length - 1].label));
  }

  // A line with a dot per point.
  function line(target, points) {
    const width = 640, height = 220, pad = 32;
    const svg = frame(target, width, height);
    if (!points.length) { svg.appendChild(el("text", {x: pad, y: height / 2}, "no data")); return; }
    const max = Math.max(...points.map(p => p.value), 1);
    const x = i => pad + (points.length === 1 ? 0 : i * (width - 2 * pad) / (points.length - 1));
    const y = v => height - pad - (height - 2 * pad) * v / max;
    svg.appendChild(el("polyline", {points: points.map((p, i) => `${x(i)},${y(p.value)}`).join(" "), class: "line"}));
    points.forEach((p, i) => {
      const dot = el("circle", {cx: x(i), cy: y(p.value), r: 3, class: "dot", "data-label": p.label, "data-value": p.value});
      dot.appendChild(el("title", {}, `${p.label}: ${p.value}`));
      svg.appendChild(dot);
    });
    svg.appendChild(el("text", {x: 2, y: 14, class: "axis"}, String(max)));
    svg.appendChild(el("text", {x: pad, y: height - 8, class: "axis"}, points[0].label));
    svg.appendChild(el("text", {x: width - pad, y: height - 8, class: "axis", "text-anchor": "end"},
                       points[points.length - 1].label));
  }

  // Horizontal bars with labels (top lists, funnels).
  function bars(target, points) {
    const row = 26, width = 640, label = 160;
    const svg = frame(target, width, Math.max(row * points.length, row));
    const max = Math.max(...points.map(p => p.value), 1);
    points.forEach((p, i) => {
      svg.appendChild(el("text", {x: 0, y: i * row + 17, class: "label"}, p.label));
      const w = (width - label - 60) * p.value / max;
      svg.appendChild(el("rect", {x: label, y: i * row + 4, width: w, height: row - 8, class: "bar",
                                  "data-label": p.label, "data-value": p.value}));
      svg.appendChild(el("text", {x: label + w + 6, y: i * row + 17, class: "value"}, String(p.value)));
    });
  }

  const PALETTE = ["#3b5bdb", "#e8590c", "#2f9e44", "#ae3ec9", "#1098ad", "#f08c00", "#c2255c", "#5c940d",
                   "#495057", "#d9480f", "#868e96"];

  // Several lines over the same labels (one per series), with a legend.
  function lines(target, labels, series) {
    const width = 640, height = 240, pad = 32, legend = 18 * Math.ceil(series.length / 4);
    const svg = frame(target, width, height + legend);
    if (!labels.length) { svg.appendChild(el("text", {x: pad, y: height / 2}, "no data")); return; }
    const max = Math.max(1, ...series.flatMap(s => s.values));
    const x = i => pad + (labels.length === 1 ? 0 : i * (width - 2 * pad) / (labels.length - 1));
    const y = v => height - pad - (height - 2 * pad) * v / max;
    series.forEach((s, n) => {
      const color = PALETTE[n % PALETTE.length];
      svg.appendChild(el("polyline", {points: s.values.map((v, i) => `${x(i)},${y(v)}`).join(" "), class: "line",
                                      stroke: color, "data-series": s.name}));
      s.values.forEach((v, i) => {
        const dot = el("circle", {cx: x(i), cy: y(v), r: 2.5, fill: color, "data-series": s.name,
                                  "data-label": labels[i], "data-value": v});
        dot.appendChild(el("title", {}, `${s.name} ${labels[i]}: ${v}`));
        svg.appendChild(dot);
      });
      const lx = 2 + (n % 4) * 160, ly = height + 14 + 18 * Math.floor(n / 4);
      svg.appendChild(el("rect", {x: lx, y: ly - 9, width: 10, height: 10, fill: color}));
      svg.appendChild(el("text", {x: lx + 14, y: ly, class: "label"}, s.name));
    });
    svg.appendChild(el("text", {x: 2, y: 14, class: "axis"}, String(max)));
    svg.appendChild(el("text", {x: pad, y: height - 8, class: "axis"}, labels[0]));
    svg.appendChild(el("text", {x: width - pad, y: height - 8, class: "axis", "text-anchor": "end"},
                       labels[labels.length - 1]));
  }

  // Bars stacked up (the first kinds) and down (the last), per label: lifecycle.
  function diverging(target, rows, up, down) {
    const width = 640, height = 240, pad = 24, mid = height / 2;
    const svg = frame(target, width, height + 20);
    if (!rows.length) { svg.appendChild(el("text", {x: pad, y: mid}, "no data")); return; }
    const most = Math.max(1, ...rows.map(r => Math.max(up.reduce((a, k) => a + r[k], 0), down.reduce((a, k) => a + r[k], 0))));
    const scale = (mid - pad) / most;
    const step = (width - 2 * pad) / rows.length;
    rows.forEach((r, i) => {
      let top = mid;
      up.forEach((k, n) => {
        const h = r[k] * scale;
        top -= h;
        svg.appendChild(el("rect", {x: pad + i * step + 1, y: top, width: Math.max(step - 2, 1), height: h,
                                    fill: PALETTE[n], "data-label": r.bucket, "data-kind": k, "data-value": r[k]}));
      });
      let bottom = mid;
      down.forEach((k, n) => {
        const h = r[k] * scale;
        svg.appendChild(el("rect", {x: pad + i * step + 1, y: bottom, width: Math.max(step - 2, 1), height: h,
                                    fill: PALETTE[up.length + n], "data-label": r.bucket, "data-kind": k,
                                    "data-value": r[k]}));
        bottom += h;
      });
    });
    svg.appendChild(el("line", {x1: pad, x2: width - pad, y1: mid, y2: mid, stroke: "#98a2b3"}));
    [...up, ...down].forEach((k, n) => {
      svg.appendChild(el("rect", {x: pad + n * 130, y: height + 6, width: 10, height: 10, fill: PALETTE[n]}));
      svg.appendChild(el("text", {x: pad + n * 130 + 14, y: height + 15, class: "label"}, k));
    });
  }

  // A Sankey-style flow: nodes in one column per step, edges as bands as wide as their users.
  function sankey(target, answer) {
    const width = 760, pad = 8, nodeWidth = 12, gap = 10;
    const steps = [...new Set(answer.nodes.map(n => n.step))].sort((a, b) => a - b);
    const columns = steps.map(s => answer.nodes.filter(n => n.step === s));
    const tallest = Math.max(1, ...columns.map(c => c.reduce((a, n) => a + n.users, 0)));
    const rows = Math.max(1, ...columns.map(c => c.length));
    const height = Math.max(160, 26 * rows + 120);
    const svg = frame(target, width, height);
    if (!answer.nodes.length) { svg.appendChild(el("text", {x: pad, y: 40}, "no paths")); return; }
    const scale = (height - 2 * pad - gap * (rows - 1)) / tallest;
    const colX = i => pad + (steps.length === 1 ? 0 : i * (width - 2 * pad - nodeWidth - 120) / (steps.length - 1));
    const place = {};
    columns.forEach((column, i) => {
      let y = pad;
      for (const node of column) {
        const h = Math.max(2, node.users * scale);
        place[node.id] = {x: colX(i), y, h, out: y, in: y};
        y += h + gap;
      }
    });
    for (const edge of answer.edges) {
      const a = place[edge.from], b = place[edge.to];
      if (!a || !b) continue;
      const w = Math.max(1, edge.users * scale);
      const x1 = a.x + nodeWidth, x2 = b.x, y1 = a.out + w / 2, y2 = b.in + w / 2;
      a.out += w; b.in += w;
      const c = (x1 + x2) / 2;
      const band = el("path", {d: `M${x1},${y1} C${c},${y1} ${c},${y2} ${x2},${y2}`, class: "flow",
                               "stroke-width": w, "data-from": edge.from, "data-to": edge.to,
                               "data-users": edge.users});
      band.appendChild(el("title", {}, `${edge.from} → ${edge.to}: ${edge.users}`));
      svg.appendChild(band);
    }
    columns.forEach(column => column.forEach(node => {
      const p = place[node.id];
      const name = node.path || node.event_type;
      const rect = el("rect", {x: p.x, y: p.y, width: nodeWidth, height: p.h, class: "node", "data-id": node.id,
                               "data-users": node.users, "data-events": node.events});
      rect.appendChild(el("title", {}, `${name} (step ${node.step}): ${node.users} users, ${node.events} events`));
      svg.appendChild(rect);
      svg.appendChild(el("text", {x: p.x + nodeWidth + 3, y: p.y + Math.min(p.h, 14) - 2, class: "label"},
                         `${name} ${node.users}`));
    }));
  }

  return {columns, line, bars, lines, diverging, sankey, PALETTE};
})();
