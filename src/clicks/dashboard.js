// The click job's dashboard (served by `clickstay run` at / beside /metrics): the top ads of
// the last minutes from the query API, clicks per minute from the accepted counter's rate,
// the watermark's lag and the consumer lag per partition from /metrics; once a second.
//
// The URL's ?count=N&window=M choose the top-ads question (default 10 ads, 1 minute).
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const count = params.get("count") || "10";
  const window_ = params.get("window") || "1";
  Dash.setText("top-count", count);
  Dash.setText("top-window", window_);

  const topChart = Dash.barChart(document.getElementById("top-ads-chart"), "", "clicks");
  const rateChart = Dash.lineChart(document.getElementById("rate-chart"), "", "clicks/min");
  const watermarkChart = Dash.lineChart(document.getElementById("watermark-chart"), "", "seconds");
  const lagChart = Dash.lineChart(document.getElementById("lag-chart"), "", "records");
  const rates = new Dash.Rates();
  let queryApi = true;

  async function topAds() {
    const panel = document.getElementById("top-ads-panel");
    const { status, body } = await Dash.getJson(`/v1/ads/popular_ads?count=${encodeURIComponent(count)}&window=${encodeURIComponent(window_)}`);
    if (status === 404) {
      // `run --metrics-listen` alone serves /metrics and this page, not the query API.
      queryApi = false;
      panel.dataset.state = "off";
      const note = document.getElementById("top-ads-note");
      note.className = "note off";
      note.textContent = "the query API is off: this job serves /metrics only (--metrics-listen); start it with --listen to see the top ads";
      return;
    }
    if (status !== 200) {
      panel.dataset.state = "error";
      Dash.setText("top-ads-note", `GET /v1/ads/popular_ads answered ${status}: ${body && body.message}`);
      return;
    }
    const ads = body.ads;
    topChart.set(ads.map((ad) => ad.ad_id), ads.map((ad) => ad.clicks));
    Dash.fillTable(
      document.getElementById("top-ads"),
      ads.map((ad, i) => ({ cells: [i + 1, ad.ad_id, ad.clicks], data: { adId: ad.ad_id, clicks: ad.clicks } })),
    );
    panel.dataset.asOf = body.as_of;
    panel.dataset.state = "ready";
    const asOf = new Date(body.as_of).toISOString().replace(".000Z", "Z");
    Dash.setText("top-ads-note", `GET /v1/ads/popular_ads: panes ${new Date(body.window_start).toISOString().slice(11, 16)}–${new Date(body.window_end).toISOString().slice(11, 16)} UTC, as of ${asOf}`);
  }

  async function fromMetrics() {
    const metrics = await Dash.getMetrics();
    const now = Date.now() / 1000;
    const accepted = Dash.total(metrics, "clickstay_clicks_events_accepted_total");
    const perSecond = accepted === null ? null : rates.rate("accepted", accepted, now);
    if (perSecond !== null) rateChart.push(now, { "clicks/min": perSecond * 60 });
    const lag = Dash.total(metrics, "clickstay_clicks_watermark_lag_seconds");
    watermarkChart.push(now, { "watermark lag": lag });
    const watermark = Dash.total(metrics, "clickstay_clicks_watermark_seconds");
    Dash.setText("watermark", watermark ? new Date(watermark * 1000).toISOString().replace(".000Z", "Z") : "–");
    const behind = Dash.byLabel(metrics, "clickstay_kafka_consumer_lag", "partition");
    const read = Dash.byLabel(metrics, "clickstay_clicks_events_read_total", "partition");
    const series = {};
    for (const [partition, value] of Object.entries(behind)) series[`partition ${partition}`] = value;
    lagChart.push(now, series);
    const partitions = [...new Set([...Object.keys(behind), ...Object.keys(read)])].sort((a, b) => a - b);
    Dash.fillTable(
      document.getElementById("partitions"),
      partitions.map((p) => ({ cells: [p, Dash.format(behind[p] ?? null, 0), Dash.format(read[p] ?? null, 0)], data: { partition: p, lag: behind[p] ?? "", read: read[p] ?? "" } })),
    );
    return accepted;
  }

  Dash.every(1000, async () => {
    const [accepted] = await Promise.all([fromMetrics(), queryApi ? topAds() : Promise.resolve()]);
    Dash.setText("status", `${Dash.format(accepted, 0)} clicks accepted · updated ${new Date().toISOString().slice(11, 19)} UTC`);
  });
})();
