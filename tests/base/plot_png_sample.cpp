// Test helper for test_plot_png.py: `plot_png_sample DIR` writes
//   DIR/bars.png: 640x400, values {3, 1.5, -1, 4, 2.5}, categories {0, 1, 1, 2, 0}
//                 named {"Mamba", "attention", "MLP"};
//   DIR/lines.png: 640x400, log-y, series "exp" y = 10^(x/2) for x = 0..8 and
//                 series "flat" y = 5 for x = 0..8.
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
  return 0;
}
