// Test helper for test_plot_png.py: `plot_png_sample DIR` writes
//   DIR/bars.png: 640x400, values {3, 1.5, -1, 4, 2.5}, categories {0, 1, 1, 2, 0}
//                 named {"Mamba", "attention", "MLP"};
//   DIR/lines.png: 640x400, log-y, series "exp" y = 10^(x/2) for x = 0..8 and
//                 series "flat" y = 5 for x = 0..8.
//   DIR/figure.png: 640x460, three panels over x = 0..10: "kd" y = 0.02 + 0.001 x,
//                 "held-out" y = 1.15 - 0.01 x, "lr" y = 1e-4 (x + 1) on a log axis.
#include <cmath>
#include <iostream>

#include "minipuzzle/plot_png.h"

using namespace minipuzzle::plot;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: plot_png_sample DIR\n";
    return 2;
  }
  std::filesystem::path dir = argv[1];
  BarChart b;
  b.title = "Importance per layer";
  b.x_label = "layer";
  b.y_label = "score";
  b.values = {3, 1.5, -1, 4, 2.5};
  b.category = {0, 1, 1, 2, 0};
  b.categories = {"Mamba", "attention", "MLP"};
  b.width = 640, b.height = 400;
  write_png(dir / "bars.png", b);
  LineChart l;
  l.title = "Loss";
  l.x_label = "step";
  l.y_label = "value";
  l.log_y = true;
  l.width = 640, l.height = 400;
  Series e{"exp", {}, {}}, f{"flat", {}, {}};
  for (int x = 0; x <= 8; ++x) {
    e.x.push_back(x), e.y.push_back(std::pow(10.0, x / 2.0));
    f.x.push_back(x), f.y.push_back(5);
  }
  l.series = {e, f};
  write_png(dir / "lines.png", l);
  Figure fig;
  fig.title = "long distillation";
  fig.x_label = "step";
  fig.width = 640, fig.height = 460;
  fig.panels.resize(3);
  fig.panels[0].title = "kd", fig.panels[1].title = "held-out", fig.panels[2].title = "lr";
  fig.panels[2].log_y = true;
  for (auto& p : fig.panels) p.series.resize(1);
  for (int x = 0; x <= 10; ++x) {
    const double ys[3] = {0.02 + 0.001 * x, 1.15 - 0.01 * x, 1e-4 * (x + 1)};
    for (int k = 0; k < 3; ++k) fig.panels[k].series[0].x.push_back(x), fig.panels[k].series[0].y.push_back(ys[k]);
  }
  write_png(dir / "figure.png", fig);
  return 0;
}
