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

  return {columns, line, bars};
})();
