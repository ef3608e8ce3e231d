// minicloud console: confirmations, image upload with progress, the usage chart, console
// following. No inline scripts anywhere (the Content-Security-Policy forbids them).
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

function followConsole() {
  const pre = document.getElementById("console");
  if (pre) {
    pre.scrollTop = pre.scrollHeight;
  }
}
document.addEventListener("htmx:afterSwap", followConsole);

function uploadImage(form) {
  const status = document.getElementById("upload-status");
  const bar = document.getElementById("upload-progress");
  const file = document.getElementById("image-file").files[0];
  const csrf = form.getAttribute("data-csrf");
  if (!file) {
    return;
  }
  status.textContent = "Creating the image…";
  // The record first (name and format only); the bytes follow in one streamed PUT.
  const record = new FormData();
  record.append("name", form.elements.name.value);
  record.append("disk_format", form.elements.disk_format.value);
  fetch(form.action, {method: "POST", body: record, credentials: "same-origin",
                      headers: {"X-CSRF-Token": csrf}})
    .then((r) => r.json().then((body) => ({ok: r.ok, body})))
    .then(({ok, body}) => {
      if (!ok) {
        throw new Error(body.error || body.detail || "refused");
      }
      const xhr = new XMLHttpRequest();
      xhr.open("PUT", body.upload);
      xhr.setRequestHeader("X-CSRF-Token", csrf);
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      bar.hidden = false;
      xhr.upload.addEventListener("progress", (e) => {
        if (e.lengthComputable) {
          bar.value = Math.floor((100 * e.loaded) / e.total);
        }
      });
      xhr.addEventListener("load", () => {
        let answer = {};
        try { answer = JSON.parse(xhr.responseText); } catch (e) { answer = {}; }
        if (xhr.status >= 200 && xhr.status < 300) {
          bar.value = 100;
          status.textContent = "Uploaded: " + (answer.status || "done");
          window.setTimeout(() => window.location.reload(), 800);
        } else {
          status.textContent = "Upload refused: " + (answer.error || answer.detail || xhr.status);
        }
      });
      xhr.addEventListener("error", () => { status.textContent = "Upload failed."; });
      status.textContent = "Uploading…";
      xhr.send(file);
    })
    .catch((err) => { status.textContent = "Refused: " + err.message; });
}

document.addEventListener("submit", (event) => {
  if (event.target.id === "upload-form") {
    event.preventDefault();
    uploadImage(event.target);
  }
});

function drawUsageChart() {
  const canvas = document.getElementById("usage-chart");
  if (!canvas || typeof window.Chart === "undefined") {
    return;
  }
  const days = JSON.parse(canvas.getAttribute("data-days") || "[]");
  new window.Chart(canvas, {
    type: "bar",
    data: {
      labels: days.map((d) => d.day),
      datasets: [{label: "cost", data: days.map((d) => d.cost)}],
    },
    options: {animation: false, responsive: true, maintainAspectRatio: false,
              scales: {y: {beginAtZero: true}}},
  });
}

document.addEventListener("DOMContentLoaded", () => {
  drawUsageChart();
  followConsole();
});

// Guest metric graphs on the server page: fetched from /ui/servers/{id}/metrics.json and
// redrawn every 20 s.
const metricCharts = new Map();

function drawMetric(canvas) {
  fetch(canvas.getAttribute("data-src"), {credentials: "same-origin"})
    .then((r) => r.json())
    .then((body) => {
      const points = body.points || [];
      const empty = canvas.closest("figure").querySelector(".graph-empty");
      empty.hidden = points.length > 0;
      canvas.setAttribute("data-points", String(points.length));
      const labels = points.map((p) => p[0].slice(11, 16));
      const values = points.map((p) => p[1]);
      let chart = metricCharts.get(canvas.id);
      if (!chart) {
        chart = new window.Chart(canvas, {
          type: "line",
          data: {labels, datasets: [{label: body.label || "", data: values, pointRadius: 0,
                                     tension: 0.2}]},
          options: {animation: false, responsive: true, maintainAspectRatio: false,
                    plugins: {legend: {display: false}},
                    scales: {y: {beginAtZero: true}}},
        });
        metricCharts.set(canvas.id, chart);
      } else {
        chart.data.labels = labels;
        chart.data.datasets[0].data = values;
        chart.update();
      }
    })
    .catch(() => {});
}

document.addEventListener("DOMContentLoaded", () => {
  if (typeof window.Chart === "undefined") {
    return;
  }
  const canvases = document.querySelectorAll("canvas.metric-chart");
  canvases.forEach(drawMetric);
  if (canvases.length) {
    window.setInterval(() => canvases.forEach(drawMetric), 20000);
  }
});
