set terminal pngcairo size 1000,650 noenhanced
set output 'docs/results/fig1b-dirty-kernel.png'
set datafile separator ','
set key outside right
set grid
set title "Fig. 1b: soft MMU vs the kernel's GET/CLEAR_DIRTY_LOG, equal slot"
set xlabel "dirty pages"
set ylabel "harvest time (ns)"
set logscale x
set logscale y
plot 'docs/results/fig1b-dirty-kernel.dat' index 0 using 1:2 with linespoints title "walk", \
     'docs/results/fig1b-dirty-kernel.dat' index 1 using 1:2 with linespoints title "rmap", \
     'docs/results/fig1b-dirty-kernel.dat' index 2 using 1:2 with linespoints title "tdp", \
     'docs/results/fig1b-dirty-kernel.dat' index 3 using 1:2 with linespoints title "rmap_manual_get", \
     'docs/results/fig1b-dirty-kernel.dat' index 4 using 1:2 with linespoints title "rmap_clear", \
     'docs/results/fig1b-dirty-kernel.dat' index 5 using 1:2 with linespoints title "kvm_get", \
     'docs/results/fig1b-dirty-kernel.dat' index 6 using 1:2 with linespoints title "kvm_manual_get", \
     'docs/results/fig1b-dirty-kernel.dat' index 7 using 1:2 with linespoints title "kvm_clear"
