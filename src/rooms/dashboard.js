// The hotel side's dashboard (served by `clickstay rooms serve` at / on its --listen): a hotel's
// rooms still free by night and room type as a heat map (the availability API, one night per
// question), bookings per second by outcome and the view's lag per shard (from /metrics);
// once a second.
//
// The URL's ?hotel=H&start=YYYY-MM-DD&nights=N pick the heat map (default hotel 1, today UTC,
// 14 nights). When the server wants API tokens, type one into the page: it is kept in
// sessionStorage (this tab only) and sent as `Authorization: Bearer` on the /v1 questions.
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const inputs = {
    hotel: document.getElementById("hotel"),
    start: document.getElementById("start"),
    nights: document.getElementById("nights"),
    token: document.getElementById("token"),
  };
  inputs.hotel.value = params.get("hotel") || "1";
  inputs.start.value = params.get("start") || new Date().toISOString().slice(0, 10);
  inputs.nights.value = params.get("nights") || "14";
  inputs.token.value = sessionStorage.getItem("clickstay-token") || "";
  inputs.token.addEventListener("change", () => sessionStorage.setItem("clickstay-token", inputs.token.value.trim()));
  for (const name of ["hotel", "start", "nights"]) {
    inputs[name].addEventListener("change", () => {
      const url = new URL(location.href);
      url.searchParams.set(name, inputs[name].value);
      history.replaceState(null, "", url);
    });
  }

  const bookingsChart = Dash.lineChart(document.getElementById("bookings-chart"), "", "bookings/s");
  const lagChart = Dash.lineChart(document.getElementById("lag-chart"), "", "seconds");
  const rates = new Dash.Rates();

  function nightsFrom(start, count) {
    const first = new Date(`${start}T00:00:00Z`);
    return Array.from({ length: count }, (_, i) => new Date(first.getTime() + i * 86400000).toISOString().slice(0, 10));
  }

  // White when every room of the type is free (as many as its emptiest night in view), dark
  // red when none is.
  function colour(free, most) {
    const full = most > 0 ? 1 - free / most : 1;
    const light = Math.round(97 - full * 62);
    return `hsl(2, 70%, ${light}%)`;
  }

  async function heatMap() {
    const hotel = inputs.hotel.value.trim();
    const nights = nightsFrom(inputs.start.value, Math.min(60, Math.max(1, Number(inputs.nights.value) || 14)));
    const token = inputs.token.value.trim();
    const panel = document.getElementById("heat-panel");
    Dash.setText("heat-hotel", hotel);
    const answers = await Promise.all(
      nights.map((night, i) => {
        const end = nightsFrom(night, 2)[1];
        return Dash.getJson(`/v1/hotels/${encodeURIComponent(hotel)}/availability?start=${night}&end=${end}`, token);
      }),
    );
    const failed = answers.find((a) => a.status !== 200);
    if (failed) {
      panel.dataset.state = "error";
      const why = failed.status === 401 ? "this server needs an API token: type it into the field above" : `${failed.body && failed.body.error}: ${failed.body && failed.body.message}`;
      Dash.setText("heat-note", `GET /v1/hotels/${hotel}/availability answered ${failed.status}: ${why}`);
      return;
    }
    // free[room_type][night index]
    const free = new Map();
    answers.forEach(({ body }, i) => {
      for (const { room_type_id, available } of body.room_types) {
        if (!free.has(room_type_id)) free.set(room_type_id, nights.map(() => null));
        free.get(room_type_id)[i] = available;
      }
    });
    const head = document.createElement("tr");
    head.append(...["room type", ...nights.map((n) => n.slice(5))].map((text) => Object.assign(document.createElement("th"), { textContent: text })));
    document.getElementById("heat-head").replaceChildren(head);
    const rows = [...free.keys()].sort((a, b) => a - b).map((roomType) => {
      const row = free.get(roomType);
      const most = Math.max(0, ...row.filter((v) => v !== null));
      const tr = document.createElement("tr");
      tr.append(Object.assign(document.createElement("th"), { textContent: `type ${roomType}` }));
      row.forEach((available, i) => {
        const td = document.createElement("td");
        td.textContent = available ?? "–";
        Object.assign(td.dataset, { roomType, night: nights[i], available: available ?? "" });
        td.style.background = available === null ? "#eee" : colour(available, most);
        td.style.color = available !== null && most > 0 && available / most < 0.45 ? "#fff" : "#1d2330";
        tr.append(td);
      });
      return tr;
    });
    document.getElementById("heat").replaceChildren(...rows);
    panel.dataset.state = "ready";
    panel.dataset.hotel = hotel;
    Dash.setText("heat-note", `GET /v1/hotels/${hotel}/availability, one night at a time: rooms still sellable (darker: fuller), ${nights[0]} to ${nights[nights.length - 1]}`);
  }

  async function fromMetrics() {
    const metrics = await Dash.getMetrics();
    const now = Date.now() / 1000;
    const totals = Dash.byLabel(metrics, "clickstay_rooms_bookings_total", "outcome");
    const perSecond = {};
    for (const [outcome, total] of Object.entries(totals)) perSecond[outcome] = rates.rate(outcome, total, now);
    bookingsChart.push(now, perSecond);
    Dash.fillTable(
      document.getElementById("outcomes"),
      Object.entries(totals).map(([outcome, total]) => ({ cells: [outcome, Dash.format(perSecond[outcome]), total], data: { outcome, total } })),
    );
    const seconds = Dash.byLabel(metrics, "clickstay_rooms_view_lag_seconds", "shard");
    const bytes = Dash.byLabel(metrics, "clickstay_rooms_view_lag_bytes", "shard");
    const inUse = Dash.byLabel(metrics, "clickstay_rooms_pool_in_use", "shard");
    const series = {};
    for (const [shard, value] of Object.entries(seconds)) series[`shard ${shard}`] = value;
    lagChart.push(now, series);
    if (Object.keys(seconds).length === 0) {
      const note = document.getElementById("view-note");
      note.className = "note off";
      note.textContent = "no availability view: this server answers from the database (start it with --dataflow dataflows/rooms.toml)";
    }
    const shards = [...new Set([...Object.keys(inUse), ...Object.keys(seconds)])].sort((a, b) => a - b);
    Dash.fillTable(
      document.getElementById("shards"),
      shards.map((s) => ({ cells: [s, Dash.format(seconds[s] ?? null), Dash.format(bytes[s] ?? null, 0), Dash.format(inUse[s] ?? null, 0)], data: { shard: s, lagSeconds: seconds[s] ?? "", lagBytes: bytes[s] ?? "" } })),
    );
    return Object.values(totals).reduce((a, b) => a + b, 0);
  }

  Dash.every(1000, async () => {
    const [bookings] = await Promise.all([fromMetrics(), heatMap()]);
    Dash.setText("status", `${bookings} bookings · updated ${new Date().toISOString().slice(11, 19)} UTC`);
  });
})();
