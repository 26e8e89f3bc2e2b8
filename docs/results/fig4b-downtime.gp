set terminal pngcairo size 1000,650 noenhanced
set output 'docs/results/fig4b-downtime.png'
set datafile separator ','
set key outside right
set grid
set title "Fig. 4b: downtime vs working set, rmapvm (KVM) and QEMU"
set xlabel "working set (MiB)"
set ylabel "downtime (ms)"
plot 'docs/results/fig4b-downtime.dat' index 0 using 1:2 with linespoints title "rmapvm-kvm 1-range", \
     'docs/results/fig4b-downtime.dat' index 1 using 1:2 with linespoints title "rmapvm-kvm 64M x1", \
     'docs/results/fig4b-downtime.dat' index 2 using 1:2 with linespoints title "rmapvm-kvm 4M x2", \
     'docs/results/fig4b-downtime.dat' index 3 using 1:2 with linespoints title "qemu-kvm"
