"""Translation family: unpaired image-to-image translation (Fashion-MNIST shoes -> bags, known convex-potential maps
on images), convolutional NOT with stacking, and the closed-form and discrete baselines."""
